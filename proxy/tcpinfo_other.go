//go:build !linux

package proxy

import "net"

// socketBytes is only implemented on Linux (TCP_INFO).
func socketBytes(*net.TCPConn) (received, sent uint64) { return 0, 0 }
