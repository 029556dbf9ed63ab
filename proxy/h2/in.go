package h2

import (
	"io"

	"github.com/detourmesh/detour/proxy/rawsock"
)

// tlsReadBuf is the read buffer of a connection that is not a raw socket (TLS): crypto/tls
// buffers a whole record itself, so a small buffer on top of it costs memory copies, not system
// calls.
const tlsReadBuf = 4 << 10

// reader is a connection's read buffer, which the Framer reads through. For a raw socket it
// holds a pooled bufSize buffer only while there are unread bytes: the buffer goes back to the
// pool as soon as the frames in it are consumed, and the read that waits for the next bytes
// holds none (rawsock.Reader.ReadPooled). So an idle connection costs no read buffer. Other
// connections keep a small buffer of their own. Used by the read goroutine only.
type reader struct {
	srv  *Server
	raw  rawsock.Reader // nil when the connection is not a raw socket
	src  io.Reader      // the connection, when raw is nil
	buf  []byte         // unread bytes are buf[r:w]
	bufp *[]byte        // the pooled buffer buf is, if any
	r, w int
	get  func() *[]byte
	put  func(*[]byte)
}

func (rd *reader) init(srv *Server, raw rawsock.Reader, src io.Reader) {
	rd.srv, rd.raw, rd.src = srv, raw, src
	if raw != nil {
		rd.get = func() *[]byte { return srv.bufs.get(bufSize) }
		rd.put = srv.bufs.put
	}
}

// buffered is the number of bytes read from the socket and not yet consumed.
func (rd *reader) buffered() int { return rd.w - rd.r }

// frameLen returns the length of the frame whose header starts the buffered bytes, ok false if
// fewer than the 9 header bytes are buffered.
func (rd *reader) frameLen() (n int, ok bool) {
	if rd.buffered() < 9 {
		return 0, false
	}
	h := rd.buf[rd.r:]
	return int(h[0])<<16 | int(h[1])<<8 | int(h[2]), true
}

func (rd *reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if rd.r == rd.w {
		if err := rd.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, rd.buf[rd.r:rd.w])
	rd.r += n
	if rd.r == rd.w && rd.raw != nil {
		rd.release()
	}
	return n, nil
}

// fill reads what the socket has into an empty buffer, waiting for it.
func (rd *reader) fill() error {
	rd.r, rd.w = 0, 0
	if rd.raw == nil {
		if rd.buf == nil {
			rd.buf = make([]byte, tlsReadBuf)
		}
		n, err := rd.src.Read(rd.buf)
		if n > 0 {
			rd.w = n
			return nil
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	bp, n, err := rd.raw.ReadPooled(rd.get, rd.put)
	if err != nil {
		return err
	}
	rd.bufp, rd.buf, rd.w = bp, (*bp)[:cap(*bp)], n
	return nil
}

// release gives the emptied buffer back to the pool.
func (rd *reader) release() {
	if rd.bufp != nil {
		rd.put(rd.bufp)
	}
	rd.buf, rd.bufp, rd.r, rd.w = nil, nil, 0, 0
}
