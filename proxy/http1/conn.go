package http1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// aLongTimeAgo is a deadline in the past: setting it wakes a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

var errHeadTooLarge = errors.New("http1: request head too large")

// requestError is a request the engine refuses itself; the connection closes after the answer.
type requestError struct {
	status int
	reason string
}

func (e *requestError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.status, http.StatusText(e.status), e.reason)
}

func badRequest(format string, args ...any) error {
	return &requestError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// clientConn is one client connection and the state its exchanges share.
type clientConn struct {
	s      *Server
	nc     net.Conn
	dst    netip.AddrPort
	remote string
	ctx    context.Context // ends with the connection: cancels its dials
	reqCtx context.Context // carries the ConnInfo to the Router; nil without one
	cancel context.CancelFunc

	lr headLimitReader
	br *bufio.Reader
	tp textproto.Reader
	dw deadlineWriter
	bw *bufio.Writer

	// The background goroutine of an exchange (request body copy, then watching for the client
	// going away) reports here; aborting tells it that the wake-up is ours.
	bgDone   chan bgResult
	aborting atomic.Bool

	mu     sync.Mutex
	idle   bool    // waiting for the next request: Shutdown may interrupt
	closed bool    //
	up     *upConn // upstream connection of the exchange in flight, closed with this one
	gone   error   // why the client went away during the exchange in flight
}

func newClientConn(ctx context.Context, s *Server, c net.Conn, dst netip.AddrPort) *clientConn {
	cc := &clientConn{s: s, nc: c, dst: dst, bgDone: make(chan bgResult, 1)}
	cc.ctx, cc.cancel = context.WithCancel(ctx)
	if ra := c.RemoteAddr(); ra != nil {
		cc.remote = ra.String()
	}
	cc.lr = headLimitReader{r: c, n: math.MaxInt64}
	cc.br = bufio.NewReaderSize(&cc.lr, 4096)
	cc.tp.R = cc.br
	cc.dw = deadlineWriter{c: c, timeout: s.cfg.WriteTimeout}
	cc.bw = bufio.NewWriterSize(&cc.dw, 4096)
	return cc
}

func (c *clientConn) serve() error {
	for {
		if err := c.awaitRequest(); err != nil {
			return nil
		}
		rq, err := c.readRequest()
		if err != nil {
			var re *requestError
			if errors.As(err, &re) {
				c.s.cfg.Logger.Debug("http1: refused request", "dst", c.dst, "remote", c.remote, "err", err)
				c.writeError(re.status, "detour: "+re.reason, true, false)
				return err
			}
			return nil // the client went away or timed out mid-head: nobody to tell
		}
		if !c.forward(c.ctx, rq) || c.s.shutdown.Load() {
			return nil
		}
	}
}

// awaitRequest waits up to IdleTimeout for the first byte of the next request, then starts the
// ReadHeaderTimeout clock for its head.
func (c *clientConn) awaitRequest() error {
	if c.br.Buffered() == 0 {
		// The deadline is set before the conn is marked idle, so an interrupt from Shutdown
		// always lands after it.
		c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
		c.mu.Lock()
		if c.closed || c.s.shutdown.Load() {
			c.mu.Unlock()
			return ErrServerClosed
		}
		c.idle = true
		c.mu.Unlock()
		_, err := c.br.Peek(1)
		c.mu.Lock()
		c.idle = false
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
	c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.ReadHeaderTimeout))
	return nil
}

// interruptIdle wakes a connection waiting for its next request so that it ends (Shutdown).
func (c *clientConn) interruptIdle() {
	c.mu.Lock()
	if c.idle {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
	c.mu.Unlock()
}

func (c *clientConn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	up := c.up
	c.mu.Unlock()
	c.cancel()
	c.nc.Close()
	if up != nil {
		up.nc.Close()
	}
}

// attach makes uc the upstream connection of the exchange in flight, so that closing the client
// connection (or the client going away) closes it too. It fails if that already happened.
func (c *clientConn) attach(uc *upConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.gone != nil {
		return false
	}
	c.up = uc
	return true
}

func (c *clientConn) detach() {
	c.mu.Lock()
	c.up = nil
	c.mu.Unlock()
}

// clientGone records that the client went away (or sent a broken body) and cancels the upstream
// request in flight by closing its connection: an HTTP/1.1 request cannot be cancelled otherwise.
func (c *clientConn) clientGone(err error) {
	c.mu.Lock()
	if c.gone == nil {
		c.gone = err
	}
	up := c.up
	c.mu.Unlock()
	if up != nil {
		up.nc.Close()
	}
}

// closeUp closes the upstream connection in flight, if any: its request timed out.
func (c *clientConn) closeUp() {
	c.mu.Lock()
	up := c.up
	c.mu.Unlock()
	if up != nil {
		up.nc.Close()
	}
}

func (c *clientConn) goneErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gone
}

// request is a parsed request head plus what the engine derived from it.
type request struct {
	req           *http.Request
	start         time.Time
	contentLength int64 // -1 when chunked
	hasCL         bool
	chunked       bool
	keepAlive     bool
	teTrailers    bool     // the client accepts trailers (TE: trailers), forwarded upstream
	named         []string // fields named by Connection: hop-by-hop
	upgrade       string   // Upgrade value when the client asked for a WebSocket upgrade
	body          io.Reader
}

// readRequest reads and validates one request head (RFC 9112 §2-§6). A *requestError says how
// to refuse it; other errors mean the connection failed.
func (c *clientConn) readRequest() (*request, error) {
	c.lr.n = int64(c.s.cfg.MaxHeaderBytes)
	rq, err := c.parseHead()
	hitLimit := c.lr.n <= 0
	c.lr.n = math.MaxInt64
	if err != nil {
		var pe textproto.ProtocolError
		switch {
		case errors.Is(err, errHeadTooLarge) || (hitLimit && !errors.As(err, new(*requestError))):
			return nil, &requestError{http.StatusRequestHeaderFieldsTooLarge, "request header fields too large"}
		case errors.As(err, &pe):
			return nil, badRequest("malformed header: %s", strings.TrimPrefix(string(pe), "malformed MIME header "))
		}
		return nil, err
	}
	// Bodies have no read deadline: a slow upload is legitimate, and a stuck one only holds this
	// client's own exchange.
	c.nc.SetReadDeadline(time.Time{})
	rq.start = time.Now()
	return rq, nil
}

func (c *clientConn) parseHead() (*request, error) {
	var line string
	for i := 0; ; i++ {
		var err error
		if line, err = c.tp.ReadLine(); err != nil {
			return nil, err
		}
		if line != "" {
			break
		}
		// RFC 9112 §2.2: ignore at least one empty line before the request-line.
		if i == 3 {
			return nil, badRequest("empty request line")
		}
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || target == "" {
		return nil, badRequest("malformed request line %s", quoteShort(line))
	}
	if !httpguts.ValidHeaderFieldName(method) { // a method is a token (RFC 9110 §9.1)
		return nil, badRequest("malformed method %s", quoteShort(method))
	}
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok {
		return nil, badRequest("malformed HTTP version %s", quoteShort(proto))
	}
	if major != 1 {
		return nil, &requestError{http.StatusHTTPVersionNotSupported, "unsupported HTTP version " + quoteShort(proto)}
	}
	if method == http.MethodConnect {
		return nil, &requestError{http.StatusNotImplemented, "CONNECT is not forwarded by the HTTP/1 proxy"}
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return nil, badRequest("malformed request target %s", quoteShort(target))
	}
	mh, err := c.tp.ReadMIMEHeader()
	if err != nil {
		return nil, err
	}
	h := http.Header(mh)
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, badRequest("invalid header field name %s", quoteShort(k))
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) { // NUL, CR, LF (RFC 9110 §5.5)
				return nil, badRequest("invalid value of header field %s", k)
			}
		}
	}

	// RFC 9112 §3.2: exactly one valid Host in HTTP/1.1; absolute-form overrides it.
	host := ""
	switch hosts := h["Host"]; {
	case len(hosts) > 1:
		return nil, badRequest("more than one Host header field")
	case len(hosts) == 1:
		host = hosts[0]
		if !httpguts.ValidHostHeader(host) {
			return nil, badRequest("malformed Host header %s", quoteShort(host))
		}
	case minor >= 1:
		return nil, badRequest("missing Host header field")
	}
	delete(h, "Host")
	if u.IsAbs() && u.Host != "" {
		host = u.Host
	}

	rq := &request{}
	// Framing, RFC 9112 §6. The engine re-frames the body upstream, so what it accepts here is
	// exactly what the upstream sees.
	te, hasTE := h["Transfer-Encoding"]
	cl, hasCL := h["Content-Length"]
	switch {
	case hasTE && hasCL:
		return nil, badRequest("both Content-Length and Transfer-Encoding (RFC 9112 §6.1)")
	case hasTE && minor == 0:
		return nil, badRequest("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
	case hasTE:
		if len(te) != 1 || !strings.EqualFold(textproto.TrimString(te[0]), "chunked") {
			return nil, &requestError{http.StatusNotImplemented, "unsupported Transfer-Encoding " + quoteShort(strings.Join(te, ", ")) + ": only chunked"}
		}
		rq.chunked = true
		rq.contentLength = -1
		rq.body = httputil.NewChunkedReader(c.br)
	case hasCL:
		n, err := parseContentLength(cl)
		if err != nil {
			return nil, badRequest("%v %s", err, quoteShort(strings.Join(cl, ", ")))
		}
		rq.hasCL, rq.contentLength = true, n
		if n > 0 {
			rq.body = &clBody{r: c.br, n: n}
		}
	}

	rq.named = connTokens(h["Connection"])
	// HTTP/1.0 clients get one request per connection: simpler than keep-alive negotiation,
	// and they are rare behind a mesh.
	rq.keepAlive = minor >= 1 && !hasToken(h["Connection"], "close")
	rq.teTrailers = hasToken(h["Te"], "trailers")
	if minor >= 1 && rq.body == nil && hasToken(h["Connection"], "upgrade") && hasToken(h["Upgrade"], "websocket") {
		rq.upgrade = strings.Join(h["Upgrade"], ", ")
	}
	if minor == 0 {
		delete(h, "Expect") // RFC 9110 §10.1.1: ignore 100-continue from HTTP/1.0
	}
	if !rq.chunked {
		delete(h, "Trailer")
	}

	rq.req = &http.Request{
		Method:        method,
		URL:           u,
		Proto:         proto,
		ProtoMajor:    major,
		ProtoMinor:    minor,
		Header:        h,
		Host:          host,
		RequestURI:    target,
		ContentLength: rq.contentLength,
		RemoteAddr:    c.remote,
		Close:         !rq.keepAlive,
		Body:          http.NoBody,
	}
	if rq.chunked {
		rq.req.TransferEncoding = []string{"chunked"}
	}
	if c.reqCtx != nil {
		// A copy of the Request, paid only on connections with a ConnInfo (mTLS inbound).
		rq.req = rq.req.WithContext(c.reqCtx)
	}
	return rq, nil
}

// writeError answers a request the engine could not forward, with a one-line text body.
func (c *clientConn) writeError(status int, msg string, closeConn, head bool) {
	c.writeErrorMarked(status, msg, "", closeConn, head)
}

// writeErrorMarked is writeError with ProxyErrorHeader: mark, unless mark is "".
func (c *clientConn) writeErrorMarked(status int, msg, mark string, closeConn, head bool) {
	body := oneLine(msg) + "\n"
	bw := c.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(status))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	if closeConn {
		bw.WriteString("\r\nConnection: close")
	}
	if mark != "" {
		bw.WriteString("\r\n" + ProxyErrorHeader + ": " + mark)
	}
	bw.WriteString("\r\n\r\n")
	if !head {
		bw.WriteString(body)
	}
	bw.Flush()
}

func quoteShort(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}

// headLimitReader bounds the bytes read from the client while a head is being parsed.
type headLimitReader struct {
	r io.Reader
	n int64
}

func (l *headLimitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// clBody reads a Content-Length body; a short one is an error, not an EOF.
type clBody struct {
	r *bufio.Reader
	n int64
}

func (b *clBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	if err == io.EOF && b.n > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
