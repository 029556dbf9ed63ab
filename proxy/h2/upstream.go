package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

const (
	maxStreamID = 1<<31 - 1
	// initialMaxStreams is assumed until the upstream's first SETTINGS (RFC 9113 §6.5.2
	// recommends no less than 100), which a connection waits for before it takes streams;
	// defaultMaxStreams if that SETTINGS sets no limit.
	initialMaxStreams = 100
	defaultMaxStreams = 1000
)

// pool holds the multiplexed connections to one upstream endpoint and the streams waiting for a
// stream slot on one of them. Its mutex is never held while taking another lock.
type pool struct {
	srv  *Server
	addr netip.AddrPort

	mu      sync.Mutex
	conns   []*upConn // usable (not draining) connections
	dialing int
	waiters []*stream // FIFO; entries whose stream closed are skipped
	gen     uint64    // incremented by Server.Retire; a dial that spans it is not used
	// swept is set when Server.sweep removed the (empty) pool from Server.pools: it must take
	// no stream or dial any more, or a second pool for the same address could exceed
	// MaxConnsPerEndpoint beside it, out of Retire's sight. A stream that fetched the pool just
	// before takes the address's current pool instead (Server.open).
	swept bool
}

// open gives s a stream slot on a pooled connection, or queues it and dials if the pool may grow.
// It reports false, doing nothing, if the pool was swept: the caller takes the current one.
// Called from any goroutine with no locks held.
func (p *pool) open(s *stream, fl *flusher) bool {
	p.mu.Lock()
	if p.swept {
		p.mu.Unlock()
		return false
	}
	for _, u := range p.conns {
		if !u.draining && u.active < int(u.maxStreams) {
			u.active++
			p.mu.Unlock()
			u.start(s, fl)
			return true
		}
	}
	if len(p.waiters) >= p.srv.cfg.MaxQueuedPerEndpoint {
		live := p.waiters[:0]
		for _, w := range p.waiters {
			if !w.closed.Load() {
				live = append(live, w)
			}
		}
		clear(p.waiters[len(live):])
		p.waiters = live
	}
	if len(p.waiters) >= p.srv.cfg.MaxQueuedPerEndpoint {
		p.mu.Unlock()
		s.mu.Lock()
		fin := s.failLocked(fmt.Errorf("too many streams waiting for upstream %s", p.addr), true, 503, grpcUnavailable, fl)
		s.mu.Unlock()
		if fin {
			s.cleanup(fl)
		}
		return true
	}
	p.waiters = append(p.waiters, s)
	s.waitSince.Store(p.srv.now())
	dial := p.dialing == 0 && len(p.conns) < p.srv.cfg.MaxConnsPerEndpoint
	if dial {
		p.dialing++
	}
	p.mu.Unlock()
	if dial {
		p.srv.goDial(p)
	}
	return true
}

// fillLocked reserves slots on u for waiting streams; the caller starts them after unlocking.
func (p *pool) fillLocked(u *upConn) []*stream {
	var next []*stream
	for !u.draining && u.active < int(u.maxStreams) && len(p.waiters) > 0 {
		s := p.waiters[0]
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
		if s.closed.Load() {
			continue
		}
		u.active++
		next = append(next, s)
	}
	return next
}

// release frees a stream slot on u and hands it to a waiting stream. No locks held.
func (p *pool) release(u *upConn, fl *flusher) {
	p.mu.Lock()
	u.active--
	next := p.fillLocked(u)
	idle := u.active == 0
	if idle {
		u.idleSince = p.srv.now()
	}
	closeIt := idle && u.draining
	p.mu.Unlock()
	for _, s := range next {
		u.start(s, fl)
	}
	if closeIt {
		u.goAwayAndClose()
	}
}

// drainConn stops new streams on u (upstream GOAWAY, idle timeout, stream ids exhausted) and
// closes it once its streams end.
func (p *pool) drainConn(u *upConn) {
	p.mu.Lock()
	closeIt := p.drainLocked(u)
	dial := p.redialLocked()
	p.mu.Unlock()
	if closeIt {
		u.goAwayAndClose()
	}
	if dial {
		p.srv.goDial(p)
	}
}

// drainLocked marks u draining and takes it out of the usable connections; it reports whether u
// is idle, so the caller closes it after unlocking.
func (p *pool) drainLocked(u *upConn) (idle bool) {
	u.draining = true
	for i, c := range p.conns {
		if c == u {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	return u.active == 0
}

// redialLocked reserves a dial for streams left waiting when connections were drained: they
// waited for a slot on a connection that will give none. The caller dials after unlocking.
func (p *pool) redialLocked() bool {
	if len(p.waiters) == 0 || p.dialing > 0 || len(p.conns) >= p.srv.cfg.MaxConnsPerEndpoint {
		return false
	}
	p.dialing++
	return true
}

func (p *pool) setMaxStreams(u *upConn, v uint32, fl *flusher) {
	p.mu.Lock()
	u.maxStreams = v
	var next []*stream
	if u.ready { // else the dial, waiting for these SETTINGS, fills it
		next = p.fillLocked(u)
	}
	p.mu.Unlock()
	for _, s := range next {
		u.start(s, fl)
	}
}

// dial runs on its own goroutine (Server.goDial).
func (p *pool) dial() {
	srv := p.srv
	var fl flusher
	defer fl.flush()
	p.mu.Lock()
	gen := p.gen
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(srv.ctx, srv.cfg.DialTimeout)
	nc, err := srv.dialUpstream(ctx, p.addr)
	cancel()
	var u *upConn
	if err == nil {
		u, err = newUpConn(p, nc)
	}
	if err == nil {
		srv.wg.Add(1)
		go u.readLoop()
		if err = u.awaitSettings(); err != nil {
			u.close() // its read loop tears it down; it never was a usable connection
		}
	}
	p.mu.Lock()
	p.dialing--
	if err != nil {
		var failed []*stream
		if len(p.conns) == 0 && p.dialing == 0 {
			failed, p.waiters = p.waiters, nil
		}
		p.mu.Unlock()
		srv.cfg.Logger.Debug("upstream dial failed", "addr", p.addr, "err", err)
		err = fmt.Errorf("connecting to upstream %s: %w", p.addr, err)
		if srv.cfg.OnUpstreamFailure != nil && !errors.Is(err, ErrServerClosed) {
			srv.cfg.OnUpstreamFailure(p.addr, err)
		}
		for _, s := range failed {
			s.mu.Lock()
			// Nothing of a queued stream went upstream: it may always go elsewhere.
			rs := s.againLocked(RetryDialFailed, 0, -1, err, &fl)
			var fin bool
			switch {
			case rs != nil:
			case s.route.MeshClient && !s.respHeads:
				fin = s.abortLocked(err, http2.ErrCodeRefusedStream, false, true, &fl)
			default:
				fin = s.failLocked(err, true, 503, grpcUnavailable, &fl)
			}
			s.mu.Unlock()
			if rs != nil {
				rs.run(&fl)
			}
			if fin {
				s.cleanup(&fl)
			}
		}
		return
	}
	// Retired while dialling: the connection was checked against what the endpoint used to
	// be, so it serves no stream and the waiting ones get another dial.
	stale := p.gen != gen
	var next []*stream
	if stale {
		u.draining = true
	} else {
		u.ready = true
		p.conns = append(p.conns, u)
		next = p.fillLocked(u)
	}
	again := len(p.waiters) > 0 && len(p.conns) < srv.cfg.MaxConnsPerEndpoint
	if again {
		p.dialing++
	}
	p.mu.Unlock()
	if stale {
		u.goAwayAndClose()
	}
	if again {
		srv.goDial(p)
	}
	for _, s := range next {
		u.start(s, &fl)
	}
}

// upConn is one pooled HTTP/2 connection to an upstream endpoint, with its own read goroutine.
type upConn struct {
	conn
	pool *pool
	dec  *hdec
	fl   flusher // the read goroutine's

	gotSettings bool // read goroutine only
	// settled is closed by the read loop once the upstream's first SETTINGS are applied
	// (settingsOK set) or the loop has ended without them: what the dial waits for before the
	// connection takes streams.
	settled    chan struct{}
	settingsOK atomic.Bool
	nextID     uint32 // guarded by wmu
	dead       bool   // guarded by mu: the read loop ended, no new streams

	// Guarded by pool.mu.
	ready      bool // among pool.conns once its SETTINGS arrived (or drained since)
	active     int
	maxStreams uint32
	draining   bool
	idleSince  int64

	pingAt          atomic.Int64 // srv clock of an unanswered keepalive PING, 0 if none
	keepaliveFailed atomic.Bool  // closed by the janitor: no PING answer in time
	peerKeepalive   bool         // Config.PeerKeepalive said so: pinged often, idle or busy
}

func newUpConn(p *pool, nc net.Conn) (*upConn, error) {
	srv := p.srv
	cfg := &srv.cfg
	u := &upConn{pool: p, nextID: 1, maxStreams: initialMaxStreams, settled: make(chan struct{}),
		peerKeepalive: cfg.PeerKeepalive != nil && cfg.PeerKeepalive(p.addr)}
	u.conn.init(srv, nc, false)
	u.streams = make(map[uint32]*stream)
	u.dec = newHdec(cfg.MaxHeaderListSize)
	u.idleSince = srv.now()
	u.wmu.Lock()
	u.putString(clientPreface)
	u.frameSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: cfg.InitialWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: cfg.MaxHeaderListSize},
	)
	if cfg.ConnWindow > defaultWindow {
		u.frameWindowUpdate(0, cfg.ConnWindow-defaultWindow)
	}
	u.flushLocked()
	err := u.werr
	u.wmu.Unlock()
	if err != nil {
		nc.Close()
		return nil, err
	}
	if !srv.addUp(u) {
		nc.Close()
		return nil, ErrServerClosed
	}
	return u, nil
}

// goAwayAndClose says GOAWAY and closes the connection once that is written.
func (u *upConn) goAwayAndClose() {
	u.wmu.Lock()
	u.frameGoAway(0, http2.ErrCodeNo, "")
	u.wmu.Unlock()
	u.closeWhenFlushed(afterClose)
}

func (u *upConn) removeStream(uid uint32, s *stream) {
	u.mu.Lock()
	if u.streams[uid] == s {
		delete(u.streams, uid)
	}
	u.mu.Unlock()
}

// start opens s as a new upstream stream on u, where the pool reserved it a slot: HEADERS, then
// whatever request body arrived meanwhile. No locks held.
func (u *upConn) start(s *stream, fl *flusher) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		u.pool.release(u, fl)
		return
	}
	u.mu.Lock()
	u.wmu.Lock()
	if u.dead || u.nextID > maxStreamID || u.werr != nil {
		u.wmu.Unlock()
		u.mu.Unlock()
		s.mu.Unlock()
		// Out of the usable connections first, or the pool would pick u again for s: a failed
		// write (werr) is seen here before u's read loop has torn it down.
		u.pool.drainConn(u)
		u.pool.release(u, fl)
		u.srv.open(s, fl)
		return
	}
	uid := u.nextID
	u.nextID += 2
	u.streams[uid] = s
	u.mu.Unlock()
	s.up, s.uid = u, uid
	s.sent = time.Now()
	s.req.sendWindow = u.peerInitWindow
	h := &s.head
	end := s.req.endRecv && s.req.pending() == 0 && !s.req.hasTrailer
	u.encField(":method", h.Method, false)
	u.encField(":scheme", h.Scheme, false)
	if h.Authority != "" {
		u.encField(":authority", h.Authority, false)
	}
	u.encField(":path", h.Path, false)
	// An application's own detour-attempt is not passed on: the count is the engine's to give
	// (a peer proxy's, from a MeshClient, is what this application is told).
	drop := AttemptHeader
	if s.route.MeshClient {
		drop = ""
	}
	if s.retries > 0 && s.grpc && !s.deadline.IsZero() {
		// A retry tells the application the time that is left, not the client's whole budget.
		u.encRetryFields(h.Header, time.Until(s.deadline), drop)
	} else {
		u.encFields(h.Header, drop)
	}
	if s.retries > 0 {
		// Tells the application (and its proxy's metrics) that this is a retry (Envoy's
		// x-envoy-attempt-count): 2 for the first retry.
		u.encField(AttemptHeader, strconv.Itoa(s.retries+1), false)
	}
	u.frameHeaderBlock(uid, end)
	u.wmu.Unlock()
	fl.add(&u.conn)
	if end {
		s.req.endSent = true
	} else {
		s.drain(&s.req, &s.cc.conn, s.id, &u.conn, uid, fl)
	}
	s.mu.Unlock()
}

func (u *upConn) readLoop() {
	defer u.srv.wg.Done()
	var settle sync.Once // teardown may run again after a panic
	u.srv.guard("upstream connection", &u.conn, u.serve, func(err error) {
		// Streams waiting for the upstream's SETTINGS must not wait for a connection that ended.
		settle.Do(func() {
			if !u.gotSettings {
				close(u.settled)
			}
		})
		u.teardown(err)
	})
}

// awaitSettings waits for the upstream's first SETTINGS frame (RFC 9113 §3.4: its connection
// preface), at most DialTimeout. Until then the connection takes no stream: a port that accepts
// TCP but speaks no HTTP/2 must fail the streams waiting for it as a dial failure, which they
// can be retried from since none was sent, rather than hold them until the keepalive gives up.
func (u *upConn) awaitSettings() error {
	t := time.NewTimer(u.srv.cfg.DialTimeout)
	defer t.Stop()
	select {
	case <-u.settled:
		if u.settingsOK.Load() {
			return nil
		}
		return errors.New("the connection ended before the upstream's HTTP/2 SETTINGS")
	case <-t.C:
		return fmt.Errorf("no HTTP/2 SETTINGS from the upstream within %v (is it an HTTP/2 server?)", u.srv.cfg.DialTimeout)
	case <-u.srv.ctx.Done():
		return ErrServerClosed
	}
}

func (u *upConn) serve() error {
	batch := 0
	for {
		f, err := u.readFrame()
		if err != nil {
			var se http2.StreamError
			if !errors.As(err, &se) {
				return u.connFail(err)
			}
			// Answered like any other frame's error, and flushed with them below.
			if err = u.streamError(se.StreamID, se.Code, se); err != nil {
				return u.connFail(err)
			}
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			err = u.onData(f)
		case *http2.HeadersFrame:
			err = u.onHeaders(f)
		case *http2.SettingsFrame:
			sawMax := false
			err = u.applySettings(f, &u.fl, func(v uint32) {
				sawMax = true
				u.pool.setMaxStreams(u, v, &u.fl)
			})
			if !f.IsAck() && !u.gotSettings && !sawMax {
				// No limit announced: like x/net's transport, use 1000 rather than unbounded.
				u.pool.setMaxStreams(u, defaultMaxStreams, &u.fl)
			}
			if !f.IsAck() && !u.gotSettings && err == nil {
				u.gotSettings = true
				u.settingsOK.Store(true)
				close(u.settled)
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID != 0 && u.lookup(f.StreamID) == nil && u.neverOpened(f.StreamID) {
				err = errIdle("WINDOW_UPDATE") // RFC 9113 §5.1
			} else {
				err = u.onWindowUpdate(f, &u.fl)
			}
		case *http2.RSTStreamFrame:
			err = u.onRST(f)
		case *http2.PriorityFrame:
			if f.StreamDep == f.StreamID && u.lookup(f.StreamID) != nil {
				// RFC 9113 §5.3.1: a stream cannot depend on itself.
				err = u.streamError(f.StreamID, http2.ErrCodeProtocol, errors.New("stream depends on itself"))
			}
		case *http2.PingFrame:
			if f.IsAck() {
				u.pingAt.Store(0)
			} else {
				u.wmu.Lock()
				u.framePing(true, f.Data)
				u.wmu.Unlock()
				u.fl.add(&u.conn)
			}
		case *http2.GoAwayFrame:
			u.onGoAway(f)
		case *http2.PushPromiseFrame:
			err = connError{http2.ErrCodeProtocol, "PUSH_PROMISE although push is disabled"}
		}
		if err != nil {
			return u.connFail(err)
		}
		if batch++; batch >= maxBatch || u.inputDrained() {
			batch = 0
			u.fl.flush()
			u.lastRead.Store(u.srv.now())
		}
	}
}

func (u *upConn) connFail(err error) error {
	var ce http2.ConnectionError
	var ee connError
	code, reason := http2.ErrCode(0), ""
	switch {
	case errors.As(err, &ee):
		code, reason = ee.code, ee.reason
	case errors.As(err, &ce):
		code, reason = http2.ErrCode(ce), "protocol error"
	case errors.Is(err, http2.ErrFrameTooLarge):
		code, reason = http2.ErrCodeFrameSize, "frame too large"
	default:
		if errors.Is(err, io.EOF) {
			return errors.New("upstream closed the connection")
		}
		return err
	}
	u.wmu.Lock()
	u.frameGoAway(0, code, reason)
	u.wmu.Unlock()
	u.fl.add(&u.conn)
	u.fl.flush()
	return fmt.Errorf("upstream protocol error %v: %s", code, reason)
}

// teardown fails the streams of a lost upstream connection: only those streams, never the
// client connections they came from.
func (u *upConn) teardown(err error) {
	u.close()
	u.waitWriter()
	u.pool.drainConn(u)
	u.mu.Lock()
	u.dead = true
	list := make([]*stream, 0, len(u.streams))
	for _, s := range u.streams {
		list = append(list, s)
	}
	u.mu.Unlock()
	if u.keepaliveFailed.Load() {
		err = ErrKeepalive
	}
	err = fmt.Errorf("%w: %s: %w", errUpstreamGone, u.pool.addr, err)
	for _, s := range list {
		s.mu.Lock()
		var fin bool
		var rs *resend
		if s.up == u {
			if !s.gotFinal && s.canResend() {
				rs = s.againLocked(RetryReset, 0, -1, err, &u.fl)
			}
			if rs == nil {
				s.lost = true
				fin = s.failLocked(err, true, 502, grpcUnavailable, &u.fl)
			}
		}
		s.mu.Unlock()
		if rs != nil {
			rs.run(&u.fl)
		}
		if fin {
			s.cleanup(&u.fl)
		}
	}
	u.fl.flush()
	u.srv.removeUp(u)
}

// attached returns the stream that owns upstream stream id, locked, or nil.
func (u *upConn) attached(id uint32) *stream {
	s := u.lookup(id)
	if s == nil {
		return nil
	}
	s.mu.Lock()
	if s.done || s.up != u || s.uid != id {
		s.mu.Unlock()
		return nil
	}
	return s
}

// streamError resets an upstream stream the upstream got wrong (RFC 9113 §5.4.2) and fails the
// client's stream. On an idle stream the frame is a connection error (§5.1); on a closed one
// there is nothing left to reset.
func (u *upConn) streamError(id uint32, code http2.ErrCode, cause error) error {
	s := u.attached(id)
	if s == nil {
		if u.lookup(id) == nil && u.neverOpened(id) {
			return errIdle("frame")
		}
		return nil
	}
	s.rstUpstreamLocked(code, &u.fl)
	fin := s.failLocked(fmt.Errorf("upstream %s stream error: %v", u.pool.addr, cause), true, 502, grpcInternal, &u.fl)
	s.mu.Unlock()
	if fin {
		s.cleanup(&u.fl)
	}
	return nil
}

func (u *upConn) onHeaders(f *http2.HeadersFrame) error {
	id, end := f.StreamID, f.StreamEnded()
	if err := u.readHeaderBlock(u.dec, f, &u.fl); err != nil {
		return err
	}
	s := u.attached(id)
	if s == nil {
		if u.lookup(id) == nil && u.neverOpened(id) {
			return errIdle("HEADERS") // RFC 9113 §5.1
		}
		return nil
	}
	fl := &u.fl
	d := u.dec
	var fin bool
	var rs *resend
	if !s.gotFinal {
		fin, rs = s.onResponseHead(d, end, fl)
	} else {
		fields, reason := parseTrailers(d.fields)
		if !end {
			reason = "second response HEADERS without END_STREAM"
		} else if d.tooLarge {
			reason = "response trailers too large"
		} else if d.bad != "" {
			reason = d.bad
		} else if s.respLen >= 0 && s.resp.bytes != s.respLen {
			reason = "body does not match content-length (RFC 9113 §8.1.1)"
		}
		switch {
		case s.resp.endRecv:
			// RFC 9113 §5.1 "half-closed (remote)": a stream error STREAM_CLOSED.
			s.rstUpstreamLocked(http2.ErrCodeStreamClosed, fl)
			fin = s.failLocked(fmt.Errorf("upstream %s sent HEADERS after END_STREAM", u.pool.addr), true, 502, grpcInternal, fl)
		case reason != "":
			// A malformed response is not forwarded (§8.1.1): gRPC clients get INTERNAL.
			s.rstUpstreamLocked(http2.ErrCodeProtocol, fl)
			fin = s.failLocked(fmt.Errorf("upstream %s sent malformed trailers: %s", u.pool.addr, reason), true, 502, grpcInternal, fl)
		default:
			s.grpcStatus = grpcStatus(fields)
			s.resp.trailers, s.resp.hasTrailer, s.resp.endRecv = fields, true, true
			s.drain(&s.resp, &u.conn, id, &s.cc.conn, s.id, fl)
			if !s.resp.endSent {
				s.resp.trailers = slices.Clone(fields) // waits for the client's window; fields is scratch
			}
			fin = s.complete() && s.finishLocked(nil, 0, false)
		}
	}
	s.mu.Unlock()
	if rs != nil {
		rs.run(fl)
	}
	if fin {
		s.cleanup(fl)
	}
	return nil
}

// onResponseHead forwards the upstream's response headers to the client, unless the stream's
// Retrier sends it elsewhere instead (then it returns the resend to run). The caller holds s.mu.
func (s *stream) onResponseHead(d *hdec, end bool, fl *flusher) (bool, *resend) {
	addr := s.route.Addr
	reason := d.bad
	if d.tooLarge {
		reason = "response headers too large"
	}
	var status int
	var regular = d.fields
	contentLength := int64(-1)
	if reason == "" {
		status, regular, contentLength, reason = parseResponse(d.fields)
	}
	if reason == "" && status == 101 {
		// RFC 9113 §8.6: 101 is not valid in HTTP/2; never turn the stream into a tunnel.
		reason = "upstream answered 101 Switching Protocols; protocol upgrades are not forwarded"
	}
	if reason == "" && status < 200 && end {
		reason = "informational response with END_STREAM"
	}
	if reason == "" && status >= 200 {
		// RFC 9113 §8.1.1: the content must match content-length, except where the response
		// has no content at all.
		if noContent(status, s.head.Method) {
			contentLength = 0
		} else if end && contentLength > 0 {
			reason = "content-length without content"
		}
	}
	if reason != "" {
		s.rstUpstreamLocked(http2.ErrCodeProtocol, fl)
		return s.failLocked(fmt.Errorf("bad response from upstream %s: %s", addr, reason), true, 502, grpcInternal, fl), nil
	}
	if status >= 500 || (end && s.grpc && status >= 200) {
		// A failure the Retrier may want to retry: held back until it has said.
		gs := -1
		if end {
			gs = grpcStatus(regular)
		}
		if (status >= 500 || gs > 0) && s.canResend() {
			reason, err := RetryStatus, error(nil)
			for i := range regular {
				if regular[i].Name == ProxyErrorHeader && regular[i].Value == "reset" {
					// The peer proxy lost its application's connection after sending the
					// request: a reset, not an answer.
					reason, err = RetryReset, fmt.Errorf("the upstream proxy %s lost the application's connection", addr)
				}
			}
			s.resp.endRecv = end // so no RST_STREAM goes to a stream the upstream closed
			if rs := s.againLocked(reason, status, gs, err, fl); rs != nil {
				return false, rs
			}
			s.resp.endRecv = false
		}
	}
	cc := &s.cc.conn
	if status >= 200 {
		s.gotFinal = true
		s.answered = time.Now()
		s.dropReplay()
		s.status = status
		s.respLen = contentLength
		if end {
			s.grpcStatus = grpcStatus(regular)
			s.resp.endRecv = true
		}
	}
	cc.wmu.Lock()
	cc.encField(":status", d.fields[0].Value, false)
	// A detour-proxy-error mark is for the proxy that reads it here, never passed on: the
	// engine writes its own marks itself (stream.go), so one arriving from an application is
	// not believed by the next proxy either.
	cc.encFields(regular, ProxyErrorHeader)
	cc.frameHeaderBlock(s.id, end)
	cc.wmu.Unlock()
	fl.add(cc)
	if status >= 200 {
		s.respHeads = true
	}
	if end {
		s.resp.endSent = true
	}
	return s.complete() && s.finishLocked(nil, 0, false), nil
}

func (u *upConn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	flen := int32(f.Header().Length)
	fl := &u.fl
	if u.recvAvail.Add(-flen) < 0 {
		return connError{http2.ErrCodeFlowControl, "upstream exceeded the connection window"}
	}
	s := u.attached(id)
	if s == nil {
		if u.lookup(id) == nil && u.neverOpened(id) {
			return errIdle("DATA") // RFC 9113 §5.1
		}
		u.grantConn(flen, fl)
		return nil
	}
	data := f.Data()
	var fin bool
	switch {
	case s.resp.endRecv:
		// RFC 9113 §5.1 "half-closed (remote)": a stream error STREAM_CLOSED.
		s.rstUpstreamLocked(http2.ErrCodeStreamClosed, fl)
		fin = s.failLocked(fmt.Errorf("upstream %s sent DATA after END_STREAM", u.pool.addr), true, 502, grpcInternal, fl)
		s.mu.Unlock()
		u.grantConn(flen, fl)
	case !s.gotFinal:
		// RFC 9113 §8.1: DATA before the final response HEADERS is malformed.
		s.rstUpstreamLocked(http2.ErrCodeProtocol, fl)
		fin = s.failLocked(fmt.Errorf("upstream %s sent DATA before its response headers", u.pool.addr), true, 502, grpcInternal, fl)
		s.mu.Unlock()
		u.grantConn(flen, fl)
	case s.respLen >= 0 && (s.resp.bytes+int64(len(data)) > s.respLen || f.StreamEnded() && s.resp.bytes+int64(len(data)) != s.respLen):
		// RFC 9113 §8.1.1: checked before the bytes are forwarded, so the client never
		// sees the end of a body that does not match its content-length.
		s.rstUpstreamLocked(http2.ErrCodeProtocol, fl)
		fin = s.failLocked(fmt.Errorf("upstream %s sent a body that does not match its content-length", u.pool.addr), true, 502, grpcInternal, fl)
		s.mu.Unlock()
		u.grantConn(flen, fl)
	default:
		s.resp.recvAvail -= flen
		if s.resp.recvAvail < 0 {
			s.rstUpstreamLocked(http2.ErrCodeFlowControl, fl)
			fin = s.abortLocked(errUpstreamFlow, http2.ErrCodeInternal, false, true, fl)
			s.mu.Unlock()
			u.grantConn(flen, fl)
			break
		}
		s.resp.bytes += int64(len(data))
		s.deliver(&s.resp, &u.conn, id, &s.cc.conn, s.id, data, f.StreamEnded(), fl)
		if pad := flen - int32(len(data)); pad > 0 {
			s.grantStream(&s.resp, &u.conn, id, pad, fl)
		}
		fin = s.complete() && s.finishLocked(nil, 0, false)
		s.mu.Unlock()
	}
	if fin {
		s.cleanup(fl)
	}
	return nil
}

func (u *upConn) onRST(f *http2.RSTStreamFrame) error {
	s := u.attached(f.StreamID)
	if s == nil {
		if u.lookup(f.StreamID) == nil && u.neverOpened(f.StreamID) {
			return errIdle("RST_STREAM") // RFC 9113 §5.1, §6.4
		}
		return nil
	}
	fl := &u.fl
	var fin bool
	var rs *resend
	switch code := f.ErrCode; {
	case code == http2.ErrCodeRefusedStream:
		// RFC 9113 §8.7: the request was not processed; send it elsewhere if we can.
		if s.route.Retry != nil {
			if s.replayable && !s.gotFinal {
				rs = s.againLocked(RetryRefused, 0, -1, upstreamReset(code), fl)
			}
		} else if old := s.retryLocked(); old != nil {
			s.mu.Unlock()
			old.pool.release(old, fl)
			s.srv.open(s, fl)
			return nil
		}
		switch {
		case rs != nil:
		case s.route.Retry != nil && !s.respHeads:
			// Every endpoint tried refused it: answered like a failed dial.
			fin = s.failLocked(fmt.Errorf("upstream %s refused the stream and no other endpoint took it", u.pool.addr), true, 503, grpcUnavailable, fl)
		default:
			fin = s.abortLocked(upstreamReset(code), code, false, true, fl)
		}
	case code == http2.ErrCodeNo && s.resp.endRecv:
		// The upstream sent its whole response and needs no more request (RFC 9113 §8.1).
		s.req.endSent = true
		fin = s.complete() && s.finishLocked(nil, 0, false)
	default:
		if !s.gotFinal && s.canResend() {
			rs = s.againLocked(RetryReset, 0, -1, upstreamReset(code), fl)
		}
		if rs == nil {
			fin = s.abortLocked(upstreamReset(code), code, false, code != http2.ErrCodeCancel, fl)
		}
	}
	s.mu.Unlock()
	if rs != nil {
		rs.run(fl)
	}
	if fin {
		s.cleanup(fl)
	}
	return nil
}

// onGoAway stops new streams on u and replays the streams the upstream did not process
// (RFC 9113 §6.8: ids above last-stream-id).
func (u *upConn) onGoAway(f *http2.GoAwayFrame) {
	u.pool.drainConn(u)
	last := f.LastStreamID
	u.mu.Lock()
	var list []*stream
	for id, s := range u.streams {
		if id > last {
			list = append(list, s)
		}
	}
	u.mu.Unlock()
	fl := &u.fl
	for _, s := range list {
		s.mu.Lock()
		if s.done || s.up != u || s.uid <= last {
			s.mu.Unlock()
			continue
		}
		if s.route.Retry != nil && s.replayable && !s.gotFinal {
			err := fmt.Errorf("upstream %s refused the stream (GOAWAY %v)", u.pool.addr, f.ErrCode)
			if rs := s.againLocked(RetryRefused, 0, -1, err, fl); rs != nil {
				s.mu.Unlock()
				rs.run(fl)
				continue
			}
		} else if old := s.retryLocked(); old != nil {
			s.mu.Unlock()
			old.pool.release(old, fl)
			s.srv.open(s, fl)
			continue
		}
		fin := s.failLocked(fmt.Errorf("upstream %s refused the stream (GOAWAY %v) and it cannot be replayed", u.pool.addr, f.ErrCode), true, 503, grpcUnavailable, fl)
		s.mu.Unlock()
		if fin {
			s.cleanup(fl)
		}
	}
}

// rerouteSlowDials sends elsewhere the streams that have waited more than QueueReroute for a
// connection to p still being dialled (a peer that drops SYNs makes a dial last its whole
// timeout): nothing of them went upstream, so it is safe, and their Retrier decides. A stream
// its Retrier keeps goes back to the end of the queue. Called by the janitor.
func (p *pool) rerouteSlowDials(now int64, fl *flusher) {
	patience := p.srv.cfg.QueueReroute
	p.mu.Lock()
	if len(p.conns) > 0 || p.dialing == 0 || len(p.waiters) == 0 {
		p.mu.Unlock()
		return
	}
	var slow []*stream
	keep := p.waiters[:0]
	for _, w := range p.waiters {
		if !w.closed.Load() && w.route.Retry != nil && time.Duration(now-w.waitSince.Load()) > patience {
			slow = append(slow, w)
			continue
		}
		keep = append(keep, w)
	}
	clear(p.waiters[len(keep):])
	p.waiters = keep
	p.mu.Unlock()
	err := fmt.Errorf("connecting to upstream %s: still dialling after %v", p.addr, patience)
	for _, s := range slow {
		s.mu.Lock()
		var rs *resend
		if !s.done && s.up == nil {
			rs = s.againLocked(RetryDialFailed, 0, -1, err, fl)
		}
		s.mu.Unlock()
		if rs != nil {
			rs.run(fl)
		} else {
			p.srv.open(s, fl)
		}
	}
}
