// Package rawsock reads and writes plain TCP sockets with raw non-blocking system calls, through
// the socket's syscall.RawConn, so the runtime's poller still parks a goroutine on EAGAIN and
// deadlines and Close still apply.
//
// It exists because of Go's sysmon thread: a proxy at moderate load goes idle between requests,
// sysmon then sleeps until a system call made through the runtime's syscall path wakes it, and
// once awake it polls every 20 µs for a millisecond or more. net.Conn's Read and Write take that
// path, so at 1000 requests/s sysmon never rests; its wake-ups were a fifth of a proxy's CPU.
// A non-blocking socket call returns at once and needs nothing that path provides, which is why
// the runtime's own poller calls epoll raw as well.
package rawsock

import (
	"io"
	"net"
)

// IO returns a reader and writer for c that use raw system calls when c is a plain TCP socket,
// or one wrapping it that replays peeked bytes first (proxy/detect.Conn); ok is false otherwise
// (TLS, pipes), and c should be used as it is.
func IO(c net.Conn) (r Reader, w Writer, ok bool) {
	rs := rawIO(c)
	if rs == nil {
		return nil, nil, false
	}
	return rs, rs, true
}

// Reader is IO's reader. Read waits (parked in the runtime's poller) until the socket has data.
// One goroutine reads a socket at a time.
type Reader interface {
	io.Reader
	// ReadPooled is Read into a buffer it takes with get just before each attempt and hands
	// back with put when the attempt finds no data, before it waits: so a goroutine waiting for
	// input holds no buffer, which is what makes idle connections cheap. It returns the buffer
	// (*b[:n] holds the bytes read; n > 0 when err is nil), which is the caller's to put back.
	ReadPooled(get func() *[]byte, put func(*[]byte)) (b *[]byte, n int, err error)
}

// Writer is IO's writer. Write waits (parked in the runtime's poller, not in a thread) until the
// socket has taken all of p; TryWrite never waits.
type Writer interface {
	io.Writer
	// TryWrite writes as much of p as the socket's send buffer takes now and returns at once:
	// n < len(p) with a nil error means the buffer is full. It is what lets a goroutine that
	// serves many peers write to one of them without ever blocking on it.
	TryWrite(p []byte) (n int, err error)
}

// Wrap returns c with its Read and Write done by IO's raw calls, and everything else (Close,
// deadlines, addresses) by c; c itself when it is not a plain TCP socket. A TLS connection over
// the wrapped socket then reads and writes it raw too.
func Wrap(c net.Conn) net.Conn {
	r, w, ok := IO(c)
	if !ok {
		return c
	}
	return &conn{Conn: c, r: r, w: w}
}

type conn struct {
	net.Conn
	r io.Reader
	w io.Writer
}

func (c *conn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *conn) Write(p []byte) (int, error) { return c.w.Write(p) }
