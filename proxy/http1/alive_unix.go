//go:build unix

package http1

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerCheck reports whether an idle connection has been closed by its peer (or has unread
// bytes, which an idle HTTP/1.1 connection must not), by peeking without blocking. Catching the
// common case here saves a failed exchange and a replay; connections that are not sockets
// (TLS) report false and rely on the replay. It is built once per connection so that a check
// costs one recvfrom(2) and no allocation.
type peerCheck struct {
	rc     syscall.RawConn
	closed bool
	b      [1]byte
	fn     func(fd uintptr) bool
}

func newPeerCheck(c net.Conn) *peerCheck {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &peerCheck{rc: rc}
	p.fn = func(fd uintptr) bool {
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 { // n is -1 as a uintptr
			p.closed = errno != unix.EAGAIN && errno != unix.EINTR
		} else {
			p.closed = true // n == 0 is EOF; n > 0 is a byte an idle connection must not have
		}
		return true
	}
	return p
}

func (p *peerCheck) peerClosed() bool {
	if p == nil {
		return false
	}
	if err := p.rc.Read(p.fn); err != nil {
		return true
	}
	return p.closed
}
