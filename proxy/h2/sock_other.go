//go:build !linux

package h2

import (
	"io"
	"net"
)

// rawIO has a Linux implementation only (sock_linux.go); elsewhere connections are read and
// written through net.Conn.
func rawIO(net.Conn) (io.Reader, io.Writer) { return nil, nil }
