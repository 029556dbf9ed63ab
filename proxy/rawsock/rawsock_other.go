//go:build !linux

package rawsock

import (
	"io"
	"net"
)

func rawIO(net.Conn) (io.Reader, io.Writer) { return nil, nil }
