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
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// maxInterim bounds the 1xx responses relayed before a final one.
const maxInterim = 16

// exchange is one request forwarded to one upstream endpoint.
type exchange struct {
	c   *clientConn
	rq  *request
	res Result
	// The attempt's Route (its Addr is res.Addr), without Timeout: the first one's applies.
	done  func(Result)
	retry Retrier

	replay  []byte        // the body kept so far
	timeout time.Duration // the first Route's Timeout, from the request head's end
	sent    time.Time     // when the request head went upstream (the last try's); zero if never
	interim int           // 1xx responses received

	attempts  int32
	expired   atomic.Bool // timeout passed
	bodyDone  atomic.Bool // the request body has been forwarded completely (or there is none)
	kept      atomic.Bool // all of the request body was read from the client into replay
	bgRunning bool
	killed    bool // join closed the upstream connection under a body copy
	mesh      bool // Route.MeshClient
	keep      bool // the request body is kept in replay as it goes, for a retry
	taken     bool // some of the request body was read from the client
}

// bgResult is what the background goroutine of an exchange reports when it ends.
type bgResult struct {
	n         int64
	clientErr error // reading the request body from the client failed
	upErr     error // writing it to the upstream failed
}

// nothingReceivedError marks a failure before any response byte arrived from the upstream.
type nothingReceivedError struct{ err error }

func (e *nothingReceivedError) Error() string { return e.err.Error() }
func (e *nothingReceivedError) Unwrap() error { return e.err }

// forward sends one request upstream and its response back; it reports whether the client
// connection can carry another request.
func (c *clientConn) forward(ctx context.Context, rq *request) bool {
	r := rq.req
	route, err := c.s.cfg.Router.Route(c.dst, r)
	if err != nil {
		var refusal *Refusal
		if errors.As(err, &refusal) {
			return c.refuse(rq, route, refusal)
		}
		host := r.Host
		if host == "" {
			host = c.dst.String()
		}
		keep := rq.body == nil && rq.keepAlive
		c.writeError(http.StatusServiceUnavailable, fmt.Sprintf("detour: no route for %s: %v", host, err), !keep, r.Method == http.MethodHead)
		return keep
	}
	x := &exchange{c: c, rq: rq, res: Result{Addr: route.Addr}, done: route.Done, retry: route.Retry, mesh: route.MeshClient, attempts: 1}
	x.bodyDone.Store(rq.body == nil)
	x.keep = route.Retry != nil && rq.body != nil && !rq.chunked && rq.contentLength <= int64(c.s.cfg.MaxReplayBytes)
	defer func() { x.end(x.res) }()
	if route.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, route.Timeout)
		stop := context.AfterFunc(ctx, func() {
			if ctx.Err() == context.DeadlineExceeded {
				x.expired.Store(true)
				c.closeUp()
			}
		})
		defer func() { stop(); cancel() }()
		x.timeout = route.Timeout
	}
	return x.run(ctx)
}

// end calls the Done of the attempt that ends with res.
func (x *exchange) end(res Result) {
	res.Duration = time.Since(x.rq.start)
	res.Queued = res.Duration
	if !x.sent.IsZero() {
		res.Queued = x.sent.Sub(x.rq.start)
	}
	if x.expired.Load() && (res.Err != nil || res.Status == http.StatusGatewayTimeout) {
		res.TimedOut = true // not a response that ended as the timer fired
	}
	if x.done != nil {
		x.done(res)
	}
}

// refuse answers a request the Router refused; it reports whether the client connection can
// carry another request.
func (c *clientConn) refuse(rq *request, route Route, refusal *Refusal) bool {
	r := rq.req
	keep := rq.body == nil && rq.keepAlive
	status := refusal.status()
	c.s.cfg.Logger.Debug("http1: refused request", "dst", c.dst, "remote", c.remote, "status", status, "reason", refusal)
	c.writeError(status, refusal.Error(), !keep, r.Method == http.MethodHead)
	if route.Done != nil {
		route.Done(Result{Addr: route.Addr, Status: status, Err: refusal, Duration: time.Since(rq.start)})
	}
	return keep
}

func (x *exchange) run(ctx context.Context) bool {
	c, rq := x.c, x.rq
	var uc *upConn
	var resp *http.Response
	for {
		var err error
		uc, err = c.s.pool.get(ctx, x.res.Addr, rq.upgrade != "" || x.res.Retries > 0)
		if err != nil {
			if x.expired.Load() {
				return x.gatewayTimeout()
			}
			err = fmt.Errorf("dialing upstream %s: %w", x.res.Addr, err)
			if x.again(RetryDialFailed, 0, err) {
				continue
			}
			if x.mesh {
				if x.res.Retries > 0 {
					// A replay after a pooled connection closed: the first try may have
					// reached the application.
					return x.failWith(http.StatusBadGateway, "reset", err)
				}
				return x.failWith(http.StatusServiceUnavailable, "refused", err)
			}
			return x.badGateway(err)
		}
		if !c.attach(uc) {
			uc.nc.Close()
			x.res.Err = errors.New("client connection closed")
			return false
		}
		if x.expired.Load() { // before attach, the timer found nothing to close
			c.detach()
			uc.nc.Close()
			return x.gatewayTimeout()
		}
		x.sent = time.Now()
		resp, err = x.send(uc)
		if err == nil {
			x.res.Headers = time.Since(x.sent)
			if resp.StatusCode < 500 || x.retry == nil {
				break
			}
			reason := RetryStatus
			if v := resp.Header[ProxyErrorHeader]; len(v) == 1 {
				switch v[0] {
				case "refused":
					reason, err = RetryRefused, fmt.Errorf("the upstream proxy %s could not reach its application", x.res.Addr)
				case "reset":
					reason, err = RetryReset, fmt.Errorf("the upstream proxy %s lost the application's connection", x.res.Addr)
				}
			}
			if !x.mayAgain() {
				break
			}
			held := x.res
			held.Status = resp.StatusCode
			next, delay, ok := x.ask(reason, resp.StatusCode, err)
			if !ok {
				break
			}
			// The response held back is dropped with its connection: the client never sees it.
			x.res.ReqBytes += x.join(uc).n
			c.detach()
			uc.nc.Close()
			x.next(held, err, next, delay)
			continue
		}
		x.res.ReqBytes += x.join(uc).n
		c.detach()
		uc.nc.Close()
		if gerr := c.goneErr(); gerr != nil {
			return x.clientFailed(gerr)
		}
		if x.expired.Load() {
			return x.gatewayTimeout()
		}
		c.nc.SetReadDeadline(time.Time{}) // join left it in the past
		if x.retryable(uc, err) {
			x.res.Retries++
			continue
		}
		var nr *nothingReceivedError
		lost := errors.As(err, &nr) && x.interim == 0
		err = fmt.Errorf("upstream %s: %w", x.res.Addr, err)
		if lost && x.again(RetryReset, 0, err) {
			continue
		}
		if lost && x.mesh {
			return x.failWith(http.StatusBadGateway, "reset", err)
		}
		return x.badGateway(err)
	}

	if resp.StatusCode == http.StatusSwitchingProtocols {
		return x.relay(uc, resp)
	}
	x.res.Status = resp.StatusCode
	minor := rq.req.ProtoMinor
	closeAfter := !rq.keepAlive || c.s.shutdown.Load()
	noBody := rq.req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent ||
		resp.StatusCode == http.StatusNotModified || resp.StatusCode < 200
	// An upstream body of unknown length (chunked, or delimited by close) goes to an HTTP/1.1
	// client chunked, with its trailers; an HTTP/1.0 client gets it delimited by close.
	chunkOut := !noBody && resp.ContentLength < 0 && minor >= 1
	if !noBody && resp.ContentLength < 0 && minor == 0 {
		closeAfter = true
	}
	x.writeResponseHead(resp, chunkOut, closeAfter)
	n, rerr, werr := x.copyResponse(resp, uc, chunkOut)
	x.res.RespBytes = n
	bg := x.join(uc)
	x.res.ReqBytes += bg.n
	c.detach()
	bodyDone := x.bodyDone.Load() && !x.killed
	if rerr == nil && werr == nil && !resp.Close && bodyDone && bg.upErr == nil && c.goneErr() == nil {
		c.s.pool.put(uc)
	} else {
		uc.nc.Close()
	}
	switch gerr := c.goneErr(); {
	case gerr != nil && (rerr != nil || werr != nil):
		x.res.Err = gerr // the watcher closed the upstream connection under the copy
		return false
	case rerr != nil:
		x.res.Err = fmt.Errorf("upstream %s: reading response body: %w", x.res.Addr, rerr)
		x.res.Upstream = true
		return false // the client sees a truncated body and a closed connection
	case werr != nil:
		x.res.Err = fmt.Errorf("writing response to client: %w", werr)
		return false
	}
	// A request body left unread puts the client connection out of sync: close it.
	return !closeAfter && bodyDone && c.goneErr() == nil
}

// send writes the request upstream, starts the background goroutine and returns the final
// response head (or 101).
func (x *exchange) send(uc *upConn) (*http.Response, error) {
	c, rq := x.c, x.rq
	x.writeRequestHead(uc.bw)
	var err error
	switch {
	case rq.body == nil:
		x.bodyDone.Store(true)
		err = uc.bw.Flush()
	case x.taken:
		// A retry: mayAgain made sure the whole body is kept.
		uc.bw.Write(x.replay)
		x.res.ReqBytes = int64(len(x.replay))
		x.bodyDone.Store(true)
		err = uc.bw.Flush()
	case rq.contentLength > 0 && rq.contentLength <= int64(c.br.Buffered()):
		// The whole body is already buffered: it leaves with the head, and no goroutine copies it.
		b, _ := c.br.Peek(int(rq.contentLength))
		uc.bw.Write(b)
		if x.keep {
			x.replay = append(x.replay[:0], b...)
			x.kept.Store(true)
		}
		c.br.Discard(len(b))
		x.taken = true
		x.res.ReqBytes = rq.contentLength
		x.bodyDone.Store(true)
		err = uc.bw.Flush()
	default:
		x.taken = true // the goroutine below reads it
		// The head goes first: a client that sent Expect: 100-continue waits for the
		// upstream's answer before it sends the body.
		err = uc.bw.Flush()
	}
	if err != nil {
		return nil, &nothingReceivedError{fmt.Errorf("writing request: %w", err)}
	}
	x.bgRunning = true
	c.aborting.Store(false)
	go x.background(uc)
	return x.readResponse(uc)
}

// mayAgain reports whether the request can be sent again whole: nothing of its body was read
// yet, or all of it is kept; no interim response reached the client; the client is still there
// and the deadline has not passed.
func (x *exchange) mayAgain() bool {
	if x.retry == nil || x.interim > 0 || x.expired.Load() || x.c.goneErr() != nil {
		return false
	}
	return !x.taken || x.kept.Load()
}

// ask asks the Retrier whether the failed attempt is sent again, where and when. The caller
// ends the failed attempt with next.
func (x *exchange) ask(reason RetryReason, status int, err error) (Route, time.Duration, bool) {
	r := x.rq.req
	a := Attempt{Method: r.Method, Path: r.URL.Path, Addr: x.res.Addr, Reason: reason, Status: status, Err: err, Attempts: int(x.attempts)}
	if x.timeout > 0 {
		if a.Remaining = x.timeout - time.Since(x.rq.start); a.Remaining <= 0 {
			return Route{}, 0, false
		}
	}
	return x.retry.Retry(&a)
}

// again asks the Retrier about an attempt that failed with no response and, on yes, moves on.
func (x *exchange) again(reason RetryReason, status int, err error) bool {
	if !x.mayAgain() {
		return false
	}
	next, delay, ok := x.ask(reason, status, err)
	if ok {
		x.next(x.res, err, next, delay)
	}
	return ok
}

// next ends the failed attempt (res) and starts the one ask chose, after its backoff.
func (x *exchange) next(res Result, err error, route Route, delay time.Duration) {
	res.Retried, res.Err, res.Upstream = true, err, true
	x.end(res)
	x.done, x.retry, x.mesh, x.attempts = route.Done, route.Retry, route.MeshClient, x.attempts+1
	x.res = Result{Addr: route.Addr}
	x.sent = time.Time{}
	x.bodyDone.Store(x.rq.body == nil)
	x.killed = false                    // what join cut short went upstream; the client's side is read whole
	x.c.nc.SetReadDeadline(time.Time{}) // join left it in the past
	if delay > 0 {
		// Bounded by the policy's maximum backoff, and by the deadline (ask checked).
		time.Sleep(delay)
	}
}

// retryable reports whether a failed exchange may be replayed on a fresh connection: the pooled
// connection it used was closed by the upstream before answering, and replaying cannot repeat
// an effect (RFC 9110 §9.2.2: idempotent method, and no body was consumed).
func (x *exchange) retryable(uc *upConn, err error) bool {
	if !uc.reused || x.res.Retries > 0 || x.rq.body != nil || x.interim > 0 {
		return false
	}
	var nr *nothingReceivedError
	if !errors.As(err, &nr) {
		return false
	}
	switch x.rq.req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// gatewayTimeout answers a request whose Route.Timeout passed before a response head.
func (x *exchange) gatewayTimeout() bool {
	x.res.Status = http.StatusGatewayTimeout
	x.res.Err = fmt.Errorf("request timeout (%v) exceeded", x.timeout)
	x.res.TimedOut = true
	x.c.writeError(http.StatusGatewayTimeout, "detour: "+x.res.Err.Error(), true, x.rq.req.Method == http.MethodHead)
	return false
}

// failWith answers a MeshClient's request that failed, marked with ProxyErrorHeader: mark.
func (x *exchange) failWith(status int, mark string, err error) bool {
	x.res.Status = status
	x.res.Err = err
	x.res.Upstream = true
	x.c.writeErrorMarked(status, "detour: "+err.Error(), mark, true, x.rq.req.Method == http.MethodHead)
	return false
}

func (x *exchange) badGateway(err error) bool {
	x.res.Status = http.StatusBadGateway
	x.res.Err = err
	x.res.Upstream = true
	keep := x.rq.keepAlive && x.bodyDone.Load() && !x.killed && !x.c.s.shutdown.Load()
	x.c.writeError(http.StatusBadGateway, "detour: "+err.Error(), !keep, x.rq.req.Method == http.MethodHead)
	return keep
}

// clientFailed ends an exchange the client broke before any response was sent: it went away,
// or its body was malformed (which gets a 400).
func (x *exchange) clientFailed(err error) bool {
	x.res.Err = err
	var ne net.Error
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) && !errors.As(err, &ne) {
		x.res.Status = http.StatusBadRequest
		x.c.writeError(http.StatusBadRequest, "detour: "+err.Error(), true, false)
	}
	return false
}

// background copies a request body that was not already buffered, then watches the client
// connection until join stops it: a read error there means the client went away, and the
// upstream request is cancelled by closing its connection.
func (x *exchange) background(uc *upConn) {
	c := x.c
	var r bgResult
	if !x.bodyDone.Load() {
		r.n, r.clientErr, r.upErr = x.copyBody(uc)
		if r.clientErr != nil && !c.aborting.Load() {
			c.clientGone(fmt.Errorf("reading request body: %w", r.clientErr))
		}
		if r.clientErr != nil || r.upErr != nil {
			c.bgDone <- r
			return
		}
		x.bodyDone.Store(true)
	}
	if _, err := c.br.Peek(1); err != nil && !c.aborting.Load() {
		c.clientGone(fmt.Errorf("client went away: %w", err))
	}
	c.bgDone <- r
}

// join stops the background goroutine and waits for it.
func (x *exchange) join(uc *upConn) bgResult {
	if !x.bgRunning {
		return bgResult{}
	}
	x.bgRunning = false
	c := x.c
	c.aborting.Store(true)
	c.nc.SetReadDeadline(aLongTimeAgo)
	bodyPending := !x.bodyDone.Load()
	if bodyPending {
		// The copy may be blocked writing to an upstream that stopped reading. A past deadline
		// wakes it without destroying a connection whose body may be complete by now.
		uc.nc.SetWriteDeadline(aLongTimeAgo)
	}
	r := <-c.bgDone
	if bodyPending {
		uc.dw.deadline = time.Time{} // re-armed by the next write
		if !x.bodyDone.Load() {
			x.killed = true
			uc.nc.Close()
		}
	}
	return r
}

func (x *exchange) copyBody(uc *upConn) (n int64, clientErr, upErr error) {
	c, rq := x.c, x.rq
	bp := c.s.getBuf()
	defer c.s.putBuf(bp)
	buf := *bp
	for {
		m, rerr := rq.body.Read(buf)
		if m > 0 {
			n += int64(m)
			if x.keep {
				// Kept before it goes upstream: an upstream that answers once it has the whole
				// body finds it kept (the replay is read only once kept says so).
				x.replay = append(x.replay, buf[:m]...)
				if int64(len(x.replay)) == rq.contentLength {
					x.kept.Store(true)
				}
			}
			if rq.chunked {
				upErr = writeChunk(uc.bw, buf[:m])
			} else {
				_, upErr = uc.bw.Write(buf[:m])
			}
			if upErr == nil && c.br.Buffered() == 0 {
				upErr = uc.bw.Flush()
			}
			if upErr != nil {
				return n, nil, upErr
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, rerr, nil
		}
	}
	if rq.chunked {
		c.lr.n = int64(c.s.cfg.MaxHeaderBytes)
		tr, err := c.tp.ReadMIMEHeader()
		c.lr.n = math.MaxInt64
		if err != nil {
			return n, fmt.Errorf("reading trailers: %w", err), nil
		}
		uc.bw.WriteString("0\r\n")
		writeTrailers(uc.bw, http.Header(tr))
		uc.bw.WriteString("\r\n")
	}
	return n, nil, uc.bw.Flush()
}

func (x *exchange) readResponse(uc *upConn) (*http.Response, error) {
	c, rq := x.c, x.rq
	for {
		if _, err := uc.br.Peek(1); err != nil {
			return nil, &nothingReceivedError{fmt.Errorf("reading response: %w", err)}
		}
		resp, err := http.ReadResponse(uc.br, rq.req)
		if err != nil {
			return nil, fmt.Errorf("reading response: %w", err)
		}
		code := resp.StatusCode
		if code == http.StatusSwitchingProtocols {
			// Never a tunnel the client did not ask for.
			if rq.upgrade == "" {
				return nil, errors.New("101 Switching Protocols to a request that asked for no upgrade")
			}
			return resp, nil
		}
		if code >= 200 {
			return resp, nil
		}
		if x.interim++; x.interim > maxInterim {
			return nil, fmt.Errorf("more than %d interim responses", maxInterim)
		}
		if rq.req.ProtoMinor == 0 {
			continue // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
		}
		bw := c.bw
		bw.WriteString("HTTP/1.1 ")
		bw.WriteString(statusLine(resp))
		bw.WriteString("\r\n")
		writeFields(bw, resp.Header, connTokens(resp.Header["Connection"]))
		bw.WriteString("\r\n")
		if err := bw.Flush(); err != nil {
			c.clientGone(fmt.Errorf("writing interim response: %w", err))
			return nil, err
		}
	}
}

func (x *exchange) writeRequestHead(bw *bufio.Writer) {
	rq, r := x.rq, x.rq.req
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.RequestURI)
	bw.WriteString(" HTTP/1.1\r\n")
	host := r.Host
	if host == "" { // HTTP/1.0 without Host: name the original destination
		host = x.c.dst.String()
	}
	writeField(bw, "Host", host)
	if !x.mesh {
		// An application's own attempt count is not passed on: the count is the engine's to
		// give (a peer proxy's is what this application is told).
		delete(r.Header, AttemptHeader)
	}
	writeFields(bw, r.Header, rq.named)
	if x.attempts > 1 {
		var b [4]byte
		writeField(bw, AttemptHeader, string(strconv.AppendInt(b[:0], int64(x.attempts), 10)))
	}
	switch {
	case rq.chunked:
		writeField(bw, "Transfer-Encoding", "chunked")
		for _, v := range r.Header["Trailer"] {
			writeField(bw, "Trailer", v)
		}
	case rq.hasCL:
		var b [20]byte
		writeField(bw, "Content-Length", string(strconv.AppendInt(b[:0], rq.contentLength, 10)))
	}
	if rq.teTrailers {
		writeField(bw, "TE", "trailers")
	}
	if rq.upgrade != "" {
		writeField(bw, "Connection", "Upgrade")
		writeField(bw, "Upgrade", rq.upgrade)
	}
	bw.WriteString("\r\n")
}

func (x *exchange) writeResponseHead(resp *http.Response, chunked, closeConn bool) {
	bw := x.c.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(statusLine(resp))
	bw.WriteString("\r\n")
	// A mark is for the proxy that reads it here, never passed on: the engine writes its own
	// (writeErrorMarked), so one from an application is not believed by the next proxy either.
	delete(resp.Header, ProxyErrorHeader)
	writeFields(bw, resp.Header, connTokens(resp.Header["Connection"]))
	if cl := resp.Header["Content-Length"]; len(cl) > 0 {
		writeField(bw, "Content-Length", cl[0])
	}
	if chunked {
		writeField(bw, "Transfer-Encoding", "chunked")
		if len(resp.Trailer) > 0 {
			names := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				if !forbiddenTrailer(k) {
					names = append(names, k)
				}
			}
			if len(names) > 0 {
				writeField(bw, "Trailer", strings.Join(names, ", "))
			}
		}
	}
	if closeConn {
		writeField(bw, "Connection", "close")
	}
	bw.WriteString("\r\n")
}

// copyResponse streams the response body to the client, flushing whenever the upstream has
// nothing more buffered, so streamed responses (SSE, long polls) are not held back.
func (x *exchange) copyResponse(resp *http.Response, uc *upConn, chunked bool) (n int64, rerr, werr error) {
	c := x.c
	bw := c.bw
	if resp.Body != http.NoBody {
		bp := c.s.getBuf()
		defer c.s.putBuf(bp)
		buf := *bp
		for {
			m, err := resp.Body.Read(buf)
			if m > 0 {
				n += int64(m)
				if chunked {
					werr = writeChunk(bw, buf[:m])
				} else {
					_, werr = bw.Write(buf[:m])
				}
				if werr == nil && uc.br.Buffered() == 0 {
					werr = bw.Flush()
				}
				if werr != nil {
					return n, nil, werr
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return n, err, nil
			}
		}
	}
	if chunked {
		bw.WriteString("0\r\n")
		writeTrailers(bw, resp.Trailer)
		bw.WriteString("\r\n")
	}
	return n, nil, bw.Flush()
}

// relay turns the exchange into an opaque two-way byte relay after the upstream accepted the
// client's WebSocket upgrade (RFC 9110 §7.8). Each direction half-closes the other side when its
// source ends; the relay ends when both have.
func (x *exchange) relay(uc *upConn, resp *http.Response) bool {
	c := x.c
	x.join(uc)
	if gerr := c.goneErr(); gerr != nil {
		c.detach()
		uc.nc.Close()
		x.res.Err = gerr
		return false
	}
	if !hasToken(resp.Header["Upgrade"], "websocket") {
		c.detach()
		uc.nc.Close()
		return x.badGateway(fmt.Errorf("upstream %s: 101 Switching Protocols to %q, not the websocket the client asked for",
			x.res.Addr, strings.Join(resp.Header["Upgrade"], ", ")))
	}
	x.res.Status = http.StatusSwitchingProtocols
	bw := c.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(statusLine(resp))
	bw.WriteString("\r\n")
	writeFields(bw, resp.Header, connTokens(resp.Header["Connection"]))
	writeField(bw, "Connection", "Upgrade")
	writeField(bw, "Upgrade", strings.Join(resp.Header["Upgrade"], ", "))
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		c.detach()
		uc.nc.Close()
		x.res.Err = fmt.Errorf("writing response to client: %w", err)
		return false
	}
	// The relay has no deadlines: WebSocket connections are long-lived and may idle.
	c.nc.SetReadDeadline(time.Time{})
	c.nc.SetWriteDeadline(time.Time{})
	uc.nc.SetWriteDeadline(time.Time{})
	type half struct {
		n   int64
		err error
	}
	toUp := make(chan half, 1)
	go func() {
		n, err := relayHalf(uc.nc, c.br, c.nc)
		toUp <- half{n, err}
	}()
	n, err := relayHalf(c.nc, uc.br, uc.nc)
	h := <-toUp
	c.detach()
	uc.nc.Close()
	x.res.ReqBytes, x.res.RespBytes = h.n, n
	switch {
	case h.err != nil:
		x.res.Err = fmt.Errorf("relaying client to upstream: %w", h.err)
	case err != nil:
		x.res.Err = fmt.Errorf("relaying upstream to client: %w", err)
	}
	return false
}

// relayHalf copies src (its buffered bytes, then the socket, with splice(2) between TCP
// sockets) to dst. At EOF it half-closes dst; on an error it closes both, which ends the other
// direction too.
func relayHalf(dst net.Conn, src *bufio.Reader, srcConn net.Conn) (int64, error) {
	var n int64
	if b := src.Buffered(); b > 0 {
		p, _ := src.Peek(b)
		m, err := dst.Write(p)
		n += int64(m)
		src.Discard(b)
		if err != nil {
			dst.Close()
			srcConn.Close()
			return n, err
		}
	}
	m, err := io.Copy(dst, srcConn)
	n += m
	if err != nil {
		dst.Close()
		srcConn.Close()
		if errors.Is(err, net.ErrClosed) {
			err = nil // the other direction closed both sockets
		}
		return n, err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
	return n, nil
}
