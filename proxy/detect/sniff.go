package detect

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Result is what Sniff learned about a connection.
type Result struct {
	Protocol Protocol
	// TimedOut is set when the client sent too little to decide before the timeout. The
	// protocol is then Opaque (or TLS, if a ClientHello began but did not finish): typically a
	// server-speaks-first protocol (SMTP, MySQL), whose client waits for the server, or an
	// idle client.
	TimedOut bool
	// EOF is set when the client closed its side (or half-closed it) before Sniff could decide.
	// The bytes it sent are still replayed, followed by EOF.
	EOF bool
	// Hello is the parsed ClientHello when Protocol is TLS and the whole ClientHello arrived
	// within the byte limit and the timeout; nil otherwise.
	Hello *ClientHello
}

// scratch holds read buffers between Sniff calls; what Sniff keeps is copied out exactly.
var scratch = sync.Pool{New: func() any { return new([]byte) }}

// Sniff reads the first bytes of conn until Classify is final (and, for TLS, until the
// ClientHello is complete), until it has max bytes, or until timeout passes, and says what
// protocol they begin. It returns a connection that yields exactly the same byte stream as
// conn would have: the bytes Sniff read, then the rest. When Sniff read nothing that connection
// is conn itself; otherwise it is a *Conn that exposes the bytes read and the raw conn, so a
// relay can write those bytes and then splice from the raw socket.
//
// A timeout is not an error: the result is Opaque with TimedOut set. Neither is EOF. Any other
// read error is returned, and the caller should close conn. timeout <= 0 waits without limit.
// Sniff clears conn's read deadline when it returns (net.Conn cannot report an earlier one to
// restore), so set deadlines after sniffing.
func Sniff(conn net.Conn, timeout time.Duration, max int) (Result, net.Conn, error) {
	if max <= 0 {
		return Result{}, conn, nil
	}
	if timeout > 0 {
		if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return Result{}, conn, err
		}
		defer conn.SetReadDeadline(time.Time{})
	}
	bp := scratch.Get().(*[]byte)
	defer scratch.Put(bp)
	if cap(*bp) < max {
		*bp = make([]byte, max)
	}
	buf := (*bp)[:max]

	var res Result
	n := 0
	for {
		m, err := conn.Read(buf[n:])
		n += m
		if m > 0 && res.decide(buf[:n], n == max) {
			break
		}
		if err != nil {
			var ne net.Error
			switch {
			case errors.Is(err, io.EOF):
				res.EOF = true
			case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
				res.TimedOut = true
				if res.Protocol != TLS {
					res.Protocol = Opaque
				}
			default:
				return Result{}, conn, err
			}
			break
		}
	}
	if n == 0 {
		return res, conn, nil
	}
	return res, &Conn{Conn: conn, peeked: append([]byte(nil), buf[:n]...)}, nil
}

// decide classifies b and reports whether Sniff is done reading.
func (r *Result) decide(b []byte, full bool) bool {
	p, final := Classify(b)
	r.Protocol = p
	if !final {
		return full
	}
	if p != TLS {
		return true
	}
	h, err := ParseClientHello(b)
	if errors.Is(err, ErrIncomplete) {
		return full
	}
	r.Hello = h // nil when malformed: still TLS to the relay, but not ours to terminate
	return true
}

// Conn is a connection whose first bytes were read by Sniff. Read returns those bytes first,
// then reads the underlying connection; everything else (Write, Close, deadlines, addresses)
// is the underlying connection's. A relay that wants splice(2) writes Peeked() to the other
// side and then copies from NetConn().
type Conn struct {
	net.Conn
	peeked []byte
}

// Read returns the peeked bytes not yet read, then reads the underlying connection.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(p, c.peeked)
		c.Discard(n)
		return n, nil
	}
	return c.Conn.Read(p)
}

// Peeked returns the sniffed bytes that Read has not returned yet. Whoever consumes them (by
// writing them elsewhere) must call Discard so they are not read twice.
func (c *Conn) Peeked() []byte { return c.peeked }

// Discard drops the first n peeked bytes, after the caller has used them directly.
func (c *Conn) Discard(n int) {
	c.peeked = c.peeked[min(n, len(c.peeked)):]
	if len(c.peeked) == 0 {
		c.peeked = nil // let the buffer go
	}
}

// NetConn returns the underlying connection. Reading it directly skips the peeked bytes.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// WriteTo writes the peeked bytes to w and then copies the underlying connection to w until
// EOF. io.Copy uses it, so copying a *Conn to a *net.TCPConn still splices after the peeked
// bytes.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(c.peeked) > 0 {
		n, err := w.Write(c.peeked)
		total += int64(n)
		c.Discard(n)
		if err != nil {
			return total, err
		}
	}
	n, err := io.Copy(w, c.Conn)
	return total + n, err
}

// CloseWrite shuts down the writing side of the underlying connection (sends a FIN), or
// returns errors.ErrUnsupported if the underlying connection cannot half-close.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
