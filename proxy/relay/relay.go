// Package relay moves bytes between two connections for traffic the proxy does not parse:
// opaque TCP, TLS it does not terminate, and the inbound plain-TCP hop to the application.
//
// It exists to get three things right that a pair of io.Copy calls gets wrong:
//   - half-close: when one side finishes sending (FIN), the other side is told with CloseWrite
//     while the reverse direction keeps flowing, so a client that shuts down its write side
//     still receives the reply;
//   - resets: when either direction fails, both connections are reset (RST), so neither peer
//     mistakes a broken stream for a complete one;
//   - zero copy: between two *net.TCPConn the copy is splice(2) in the kernel. Bytes that
//     protocol detection already read (a *detect.Conn) are written first and the splice then
//     runs between the raw sockets; wrappers would silently turn it into a user-space copy.
//
// Other connections (TLS, pipes) are copied through pooled 32 KiB buffers, never allocating per
// connection.
package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
)

// Relay copies a to b and b to a at the same time until both directions have ended, then
// closes both connections and returns the bytes copied each way. It is RelayContext without
// cancellation.
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
	return RelayContext(context.Background(), a, b)
}

// RelayContext copies a to b and b to a at the same time until both directions have ended,
// then closes both connections (Relay owns them from the call on) and returns the bytes copied
// each way.
//
// A direction ends cleanly when its source reaches EOF: its destination is then half-closed
// (CloseWrite), and the other direction goes on. A direction ends with an error when a read or
// write fails: both connections are then reset, which ends the other direction too, and the
// first error is returned. Cancelling ctx resets both connections the same way and returns
// context.Cause(ctx); without it, a peer that never closes keeps the relay open, so the
// caller's ctx is where idle and shutdown policies go.
//
// The b-to-a direction runs on a goroutine Relay starts and waits for; a-to-b runs on the
// caller's goroutine.
func RelayContext(ctx context.Context, a, b net.Conn) (aToB, bToA int64, err error) {
	r := &relay{a: a, b: b}
	stop := context.AfterFunc(ctx, func() { r.abort(context.Cause(ctx)) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		bToA = r.pipe(a, b)
	}()
	aToB = r.pipe(b, a)
	<-done
	stop()
	a.Close()
	b.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	return aToB, bToA, r.err
}

type relay struct {
	a, b    net.Conn
	mu      sync.Mutex
	err     error // the first error, which aborted the relay
	aborted bool
}

// pipe copies src to dst, then half-closes dst, or aborts the relay on an error.
func (r *relay) pipe(dst, src net.Conn) int64 {
	n, err := copyConn(dst, src)
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			// A failed CloseWrite (the peer is gone) surfaces in the other direction.
			_ = cw.CloseWrite()
		}
		// A connection that cannot half-close (a pipe) stays open until the other direction
		// ends: closing it would lose the reply.
		return n
	}
	r.abort(err)
	return n
}

// abort records err if it is the first and resets both connections, which unblocks whatever
// the other direction is doing.
func (r *relay) abort(err error) {
	r.mu.Lock()
	if r.aborted {
		r.mu.Unlock()
		return
	}
	r.aborted = true
	r.err = err
	r.mu.Unlock()
	reset(r.a)
	reset(r.b)
}

// reset closes c with an RST rather than a FIN where it can (SO_LINGER 0).
func reset(c net.Conn) {
	if tc := rawTCP(c); tc != nil {
		_ = tc.SetLinger(0)
		_ = tc.Close()
	}
	_ = c.Close()
}

// rawTCP finds the TCP connection under wrappers that expose it (detect.Conn, tls.Conn).
func rawTCP(c net.Conn) *net.TCPConn {
	for range 8 { // wrappers do not nest deeper; the bound guards against a cycle
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// Peeked is a connection whose first bytes were already read from the socket and are held
// for replay, as detect.Sniff returns. Writes to it go straight to NetConn.
type Peeked interface {
	net.Conn
	// Peeked returns the held bytes not yet consumed.
	Peeked() []byte
	// Discard consumes the first n held bytes.
	Discard(n int)
	// NetConn returns the connection the held bytes came from.
	NetConn() net.Conn
}

// copyConn copies src to dst until EOF. It writes any peeked bytes of src first, then copies
// between the raw connections: spliced when both are TCP, through a pooled buffer otherwise.
func copyConn(dst, src net.Conn) (int64, error) {
	var n int64
	if p, ok := src.(Peeked); ok {
		if held := p.Peeked(); len(held) > 0 {
			m, err := dst.Write(held)
			n += int64(m)
			p.Discard(m)
			if err != nil {
				return n, err
			}
		}
		src = p.NetConn()
	}
	if p, ok := dst.(Peeked); ok {
		dst = p.NetConn() // its held bytes belong to the other direction
	}
	if d, ok := dst.(*net.TCPConn); ok {
		if s, ok := src.(*net.TCPConn); ok {
			m, err := d.ReadFrom(s) // splice(2) on Linux
			return n + m, err
		}
	}
	m, err := copyBuffer(dst, src)
	return n + m, err
}

const bufferSize = 32 << 10

var buffers = sync.Pool{New: func() any { return new([bufferSize]byte) }}

// copyBuffer is io.CopyBuffer with a pooled buffer and without its ReaderFrom and WriterTo
// shortcuts: those allocate their own 32 KiB buffer when they cannot splice (TCPConn.ReadFrom
// from a TLS connection does).
func copyBuffer(dst io.Writer, src io.Reader) (int64, error) {
	buf := buffers.Get().(*[bufferSize]byte)
	defer buffers.Put(buf)
	var n int64
	for {
		nr, rerr := src.Read(buf[:])
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
			if nw != nr {
				return n, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return n, nil
			}
			return n, rerr
		}
	}
}
