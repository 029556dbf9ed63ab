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
	"sync"
	"sync/atomic"
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

// Deferred is a connection made by Wrap whose writes no longer wait (see Defer).
type Deferred interface {
	// Pending is the number of bytes Write accepted that the socket has not taken yet.
	Pending() int
	// Drain writes up to max pending bytes, waiting for the socket as long as it takes. One
	// goroutine drains at a time.
	Drain(max int) error
}

// Defer makes the writes of c, a connection made by Wrap, never wait: Write writes what the
// socket takes and keeps the rest, in order, for Drain. It is for a layer above c that cannot
// try a write without blocking, TLS: a tls.Conn over c writes its records at once, and the
// caller drains what the socket did not take on a goroutine of its own, so that no other
// goroutine ever waits for the peer. ok is false if c was not made by Wrap (or is nil).
func Defer(c net.Conn) (d Deferred, ok bool) {
	wc, ok := c.(*conn)
	if !ok {
		return nil, false
	}
	wc.deferred.Store(true)
	return wc, true
}

type conn struct {
	net.Conn
	r io.Reader
	w Writer

	deferred atomic.Bool
	mu       sync.Mutex // guards what follows, once deferred
	pending  []byte     // accepted, not yet taken by Drain
	out      []byte     // taken by Drain: out[off:] is not written yet
	off      int
	err      error // a Drain's write error, returned by every later Write
}

func (c *conn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *conn) Write(p []byte) (int, error) {
	if !c.deferred.Load() {
		return c.w.Write(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	n := 0
	if len(c.pending) == 0 && c.off == len(c.out) {
		// Nothing queued ahead: the socket may take it all now.
		var err error
		if n, err = c.w.TryWrite(p); err != nil {
			return n, err
		}
	}
	c.pending = append(c.pending, p[n:]...)
	return len(p), nil
}

// Pending implements Deferred.
func (c *conn) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) + len(c.out) - c.off
}

// Drain implements Deferred.
func (c *conn) Drain(max int) error {
	c.mu.Lock()
	if c.off == len(c.out) {
		// Swap the buffers: Write appends to one while this writes the other.
		c.out, c.pending, c.off = c.pending, c.out[:0], 0
	}
	if c.err != nil || c.off == len(c.out) {
		err := c.err
		c.mu.Unlock()
		return err
	}
	chunk := c.out[c.off:min(len(c.out), c.off+max)]
	c.mu.Unlock()
	_, err := c.w.Write(chunk) // out is only changed here: Write appends to pending
	c.mu.Lock()
	c.off += len(chunk)
	if err != nil && c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	return err
}
