package proxy

import (
	"net"

	"golang.org/x/sys/unix"
)

// socketBytes reads the kernel's byte counts of a client socket (TCP_INFO): bytes received from
// the client, and bytes sent to it that it acknowledged. Counting in the kernel costs the data
// path nothing; 0, 0 when the socket is gone.
func socketBytes(c *net.TCPConn) (received, sent uint64) {
	if c == nil {
		return 0, 0
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0
	}
	raw.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err == nil {
			received, sent = info.Bytes_received, info.Bytes_acked
		}
	})
	return received, sent
}
