package h2

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

const handshakeTimeout = 10 * time.Second

var (
	errClientFlow   = errors.New("client exceeded its flow-control window")
	errUpstreamFlow = errors.New("upstream exceeded its flow-control window")
)

// clientConn is one downstream HTTP/2 connection. Its read goroutine is the ServeConn caller's.
type clientConn struct {
	conn
	dst  netip.AddrPort
	info ConnInfo // Head.Conn of its streams
	dec  *hdec
	fl   flusher // the read goroutine's

	// Guarded by conn.mu. maxID is written only by the read goroutine, which may read it
	// without the lock.
	maxID     uint32        // highest client stream id seen
	closed    closedStreams // what frames on closed streams deserve (streamstate.go)
	goaway    bool          // GOAWAY sent: no new streams
	idleSince int64         // srv clock when the last stream ended

	replayBytes atomic.Int64 // request bytes all streams keep for replay
	dl          deadlines    // its streams' deadlines (deadline.go)

	// Read goroutine only.
	gotSettings bool
	peerGoAway  bool
	tokens      float64
	tokensAt    time.Time
}

func newClientConn(srv *Server, nc net.Conn, dst netip.AddrPort) *clientConn {
	cc := &clientConn{dst: dst}
	cc.conn.init(srv, nc, true)
	cc.streams = make(map[uint32]*stream)
	cc.dec = newHdec(srv.cfg.MaxHeaderListSize)
	cc.idleSince = srv.now()
	cc.tokens = float64(srv.cfg.ResetBurst)
	cc.dl.fire = cc.expireDue
	return cc
}

// serve runs the connection's read loop; the caller tears the connection down after it
// (Server.guard).
func (cc *clientConn) serve() error {
	cfg := &cc.srv.cfg
	cc.nc.SetReadDeadline(time.Now().Add(handshakeTimeout))
	var pre [len(clientPreface)]byte
	if _, err := io.ReadFull(&cc.rd, pre[:]); err != nil {
		return fmt.Errorf("reading HTTP/2 client preface: %w", err)
	}
	if string(pre[:]) != clientPreface {
		return errors.New("client did not send the HTTP/2 preface (prior knowledge h2c expected)")
	}
	cc.wmu.Lock()
	cc.frameSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: cfg.MaxConcurrentStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: cfg.InitialWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: cfg.MaxHeaderListSize},
	)
	if cfg.ConnWindow > defaultWindow {
		cc.frameWindowUpdate(0, cfg.ConnWindow-defaultWindow)
	}
	cc.flushLocked()
	cc.wmu.Unlock()

	batch := 0
	for {
		f, err := cc.readFrame()
		if err != nil {
			var se http2.StreamError
			if !errors.As(err, &se) || !cc.gotSettings {
				return cc.connFail(err)
			}
			// Answered like any other frame's error, and flushed with them below.
			if err = cc.onStreamError(se); err != nil {
				return cc.connFail(err)
			}
			f = nil
		}
		if f != nil && !cc.gotSettings {
			sf, ok := f.(*http2.SettingsFrame)
			if !ok || sf.IsAck() {
				return cc.connFail(connError{http2.ErrCodeProtocol, "first frame is not SETTINGS"})
			}
			cc.gotSettings = true
			cc.nc.SetReadDeadline(time.Time{})
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			err = cc.onData(f)
		case *http2.HeadersFrame:
			err = cc.onHeaders(f)
		case *http2.SettingsFrame:
			err = cc.applySettings(f, &cc.fl, nil)
		case *http2.WindowUpdateFrame:
			if f.StreamID > cc.maxID {
				err = errIdle("WINDOW_UPDATE") // RFC 9113 §5.1
			} else {
				err = cc.onWindowUpdate(f, &cc.fl)
			}
		case *http2.RSTStreamFrame:
			err = cc.onRST(f)
		case *http2.PriorityFrame:
			err = cc.onPriority(f)
		case *http2.PingFrame:
			if !f.IsAck() {
				cc.wmu.Lock()
				cc.framePing(true, f.Data)
				cc.wmu.Unlock()
				cc.fl.add(&cc.conn)
			}
		case *http2.GoAwayFrame:
			// RFC 9113 §6.8: the client is going away; like x/net, answer with a graceful
			// shutdown, so the connection closes as soon as its last stream ends.
			cc.peerGoAway = true
			if f.ErrCode != http2.ErrCodeNo {
				cc.fl.flush()
				return nil
			}
			cc.fl.flush()
			cc.startGoAway(http2.ErrCodeNo, "")
		case *http2.PushPromiseFrame:
			err = connError{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
		}
		if err != nil {
			return cc.connFail(err)
		}
		if batch++; batch >= maxBatch || cc.inputDrained() {
			batch = 0
			cc.fl.flush()
			if cc.peerGoAway && cc.streamCount() == 0 {
				return nil
			}
		}
	}
}

// connFail ends the connection: a GOAWAY with the error code for protocol errors, nothing for a
// connection the peer closed.
func (cc *clientConn) connFail(err error) error {
	code, reason := http2.ErrCode(0), ""
	var ce http2.ConnectionError
	var ee connError
	switch {
	case errors.As(err, &ee):
		code, reason = ee.code, ee.reason
	case errors.As(err, &ce):
		code, reason = http2.ErrCode(ce), "protocol error"
		if d := cc.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
	case errors.Is(err, http2.ErrFrameTooLarge):
		code, reason = http2.ErrCodeFrameSize, "frame too large"
	default:
		cc.fl.flush()
		cc.mu.Lock()
		gone := cc.goaway
		cc.mu.Unlock()
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || gone {
			return nil
		}
		return fmt.Errorf("reading from client: %w", err)
	}
	// The GOAWAY is buffered under mu with goaway set, so a stream that ends meanwhile and
	// finds the connection going away (removeStream) flushes it before shutting the socket.
	cc.mu.Lock()
	cc.goaway = true
	cc.wmu.Lock()
	cc.frameGoAway(cc.maxID, code, reason)
	cc.wmu.Unlock()
	cc.mu.Unlock()
	cc.fl.add(&cc.conn)
	cc.fl.flush()
	cc.srv.cfg.Logger.Debug("closing client connection", "remote", cc.nc.RemoteAddr(), "code", code, "reason", reason)
	cc.lingerClose()
	return fmt.Errorf("client connection error %v: %s", code, reason)
}

// lingerClose half-closes the socket and discards what the client still sends, for at most a
// second and 4 MiB, so the GOAWAY is not lost to a TCP reset caused by unread input.
func (cc *clientConn) lingerClose() {
	cc.closeWhenFlushed(afterCloseWrite)
	cc.nc.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(cc.nc, 4<<20))
}

// teardown cancels every stream of a closed client connection.
func (cc *clientConn) teardown() {
	cc.close()
	cc.waitWriter()
	cc.mu.Lock()
	cc.goaway = true
	list := make([]*stream, 0, len(cc.streams))
	for _, s := range cc.streams {
		list = append(list, s)
	}
	cc.mu.Unlock()
	for _, s := range list {
		s.mu.Lock()
		var fin bool
		if !s.done {
			s.rstUpstreamLocked(http2.ErrCodeCancel, &cc.fl)
			s.req.endRecv, s.resp.endSent = true, true
			fin = s.finishLocked(errClientGone, http2.ErrCodeCancel, false)
		}
		s.mu.Unlock()
		if fin {
			s.cleanup(&cc.fl)
		}
	}
	cc.fl.flush()
	cc.srv.removeClient(cc)
}

func (cc *clientConn) streamCount() int {
	cc.mu.Lock()
	n := len(cc.streams)
	cc.mu.Unlock()
	return n
}

func (cc *clientConn) removeStream(s *stream) {
	cc.mu.Lock()
	if cc.streams[s.id] == s {
		delete(cc.streams, s.id)
	}
	if !s.clientEnded {
		// The engine ended it while the client could still send; s is done, so clientEnded no
		// longer changes (it is only set on streams not done, under s.mu).
		cc.closed.resetByEngine(s.id)
	}
	n := len(cc.streams)
	if n == 0 {
		cc.idleSince = cc.srv.now()
	}
	closeNow := n == 0 && cc.goaway
	cc.mu.Unlock()
	if closeNow {
		cc.shutdownWrite()
	}
}

// shutdownWrite ends a connection that has said GOAWAY and has no streams left: once its output
// is written it half-closes (so unread client frames cannot turn the close into a reset that
// destroys the last response), and leaves the read loop a second to see the client's EOF.
func (cc *clientConn) shutdownWrite() { cc.closeWhenFlushed(afterCloseWrite) }

// startGoAway sends GOAWAY with the last stream id seen and closes the connection once its
// streams are done (graceful shutdown, idle timeout).
func (cc *clientConn) startGoAway(code http2.ErrCode, debug string) {
	cc.mu.Lock()
	if cc.goaway {
		cc.mu.Unlock()
		return
	}
	cc.goaway = true
	n := len(cc.streams)
	cc.wmu.Lock()
	cc.frameGoAway(cc.maxID, code, debug) // buffered before removeStream can see goaway (connFail)
	cc.wmu.Unlock()
	cc.mu.Unlock()
	cc.flush()
	if n == 0 {
		cc.shutdownWrite()
	}
}

// takeResetToken charges one client-caused stream reset against the rapid-reset budget.
func (cc *clientConn) takeResetToken() bool {
	cfg := &cc.srv.cfg
	now := time.Now()
	if !cc.tokensAt.IsZero() {
		cc.tokens = min(float64(cfg.ResetBurst), cc.tokens+now.Sub(cc.tokensAt).Seconds()*cfg.ResetRate)
	}
	cc.tokensAt = now
	if cc.tokens < 1 {
		return false
	}
	cc.tokens--
	return true
}

// onStreamError answers a stream error the Framer found in a frame it did not return
// (WINDOW_UPDATE with increment 0, RFC 9113 §6.9): on an idle stream the frame is a connection
// error (§5.1), on a closed one it is ignored like any WINDOW_UPDATE there.
func (cc *clientConn) onStreamError(se http2.StreamError) error {
	if se.StreamID > cc.maxID {
		return errIdle("frame")
	}
	if cc.lookup(se.StreamID) != nil {
		cc.streamError(se.StreamID, se.Code)
		if !cc.takeResetToken() {
			return connError{http2.ErrCodeEnhanceYourCalm, "too many stream errors"}
		}
	}
	return nil
}

// streamError resets a stream the client got wrong (RFC 9113 §5.4.2).
func (cc *clientConn) streamError(id uint32, code http2.ErrCode) {
	if s := cc.lookup(id); s != nil {
		s.mu.Lock()
		fin := s.abortLocked(fmt.Errorf("client stream error: %v", code), code, true, false, &cc.fl)
		s.mu.Unlock()
		if fin {
			s.cleanup(&cc.fl)
		}
		return
	}
	cc.rst(id, code)
}

func (cc *clientConn) rst(id uint32, code http2.ErrCode) {
	cc.wmu.Lock()
	cc.frameRST(id, code)
	cc.wmu.Unlock()
	cc.fl.add(&cc.conn)
}

// respondDirect answers a request the engine refuses before it becomes a stream.
func (cc *clientConn) respondDirect(id uint32, status int, msg string, reqEnded bool) {
	body := msg + "\n"
	cc.wmu.Lock()
	cc.encField(":status", statusText(status), false)
	cc.encField("content-type", "text/plain; charset=utf-8", false)
	fits := len(body) <= int(cc.sendWindow) && len(body) <= int(cc.peerInitWindow) && len(body) <= int(cc.peerMaxFrame)
	cc.frameHeaderBlock(id, !fits)
	if fits {
		cc.frameData(id, true, []byte(body))
		cc.sendWindow -= int32(len(body))
	}
	if !reqEnded {
		cc.frameRST(id, http2.ErrCodeNo)
	}
	cc.wmu.Unlock()
	cc.fl.add(&cc.conn)
}

func (cc *clientConn) onHeaders(f *http2.HeadersFrame) error {
	// Read before readHeaderBlock, which reads past f.
	id, end := f.StreamID, f.StreamEnded()
	selfDep := f.HasPriority() && f.Priority.StreamDep == id
	if err := cc.readHeaderBlock(cc.dec, f, &cc.fl); err != nil {
		return err
	}
	d := cc.dec
	if id%2 == 0 {
		return connError{http2.ErrCodeProtocol, "client opened an even-numbered stream"}
	}
	if s := cc.lookup(id); s != nil {
		return cc.onTrailers(s, end, selfDep)
	}
	cc.mu.Lock()
	if id <= cc.maxID {
		// A closed stream; the block was decoded to keep HPACK in sync (RFC 9113 §5.1).
		how := cc.closed.how(id)
		cc.mu.Unlock()
		switch how {
		case neverOpened:
			return connError{http2.ErrCodeProtocol, "new stream id lower than one already opened (RFC 9113 §5.1.1)"}
		case closedByEngine:
			return nil
		}
		return cc.streamClosed(id)
	}
	cc.openedLocked(id)
	refuse := cc.goaway || uint32(len(cc.streams)) >= cc.srv.cfg.MaxConcurrentStreams
	cc.mu.Unlock()
	if refuse {
		// RFC 9113 §5.1.2, §6.8: REFUSED_STREAM means "not processed, safe to retry".
		cc.rst(id, http2.ErrCodeRefusedStream)
		cc.resetWhileOpen(id, end)
		if !cc.takeResetToken() {
			return connError{http2.ErrCodeEnhanceYourCalm, "too many refused streams"}
		}
		return nil
	}
	if d.tooLarge {
		cc.respondDirect(id, 431, "request header fields too large", end)
		cc.resetWhileOpen(id, end)
		return nil
	}
	srv := cc.srv
	s := &stream{srv: srv, cc: cc, id: id, grpcStatus: -1, respLen: -1}
	reason, connect := "", false
	if d.bad == "" {
		s.reqLen, reason, connect = parseRequest(append(s.fieldBuf[:0], d.fields...), &s.head)
	} else {
		reason = d.bad
	}
	switch {
	case reason != "":
	case selfDep:
		reason = "stream depends on itself (RFC 9113 §5.3.1)"
	case end && s.reqLen > 0:
		reason = "content-length without content (RFC 9113 §8.1.1)"
	}
	if reason != "" {
		// RFC 9113 §8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR.
		cc.rst(id, http2.ErrCodeProtocol)
		cc.resetWhileOpen(id, end)
		if !cc.takeResetToken() {
			return connError{http2.ErrCodeEnhanceYourCalm, "too many malformed requests"}
		}
		return nil
	}
	if connect {
		cc.respondDirect(id, 405, "CONNECT is not supported by this proxy", end)
		cc.resetWhileOpen(id, end)
		return nil
	}

	h := &s.head
	s.start = time.Now()
	s.grpc = strings.HasPrefix(h.Get("content-type"), "application/grpc")
	s.req.recvAvail = int32(srv.cfg.InitialWindow)
	s.resp.recvAvail = int32(srv.cfg.InitialWindow)
	s.req.endRecv, s.clientEnded = end, end
	s.replayable = srv.cfg.MaxReplayBytes >= 0
	s.req.keep = s.replayable
	cc.mu.Lock()
	cc.wmu.Lock()
	s.resp.sendWindow = cc.peerInitWindow
	cc.wmu.Unlock()
	cc.streams[id] = s
	cc.mu.Unlock()

	h.Conn = &cc.info
	route, err := srv.cfg.Router.Route(cc.dst, h)
	s.route = route
	if err == nil && !route.Addr.IsValid() {
		err = errors.New("router returned no endpoint")
	}
	if refusal := asRefusal(err); refusal != nil {
		// Denied on purpose: answered with the Refusal's statuses, and not the upstream's fault.
		httpStatus, grpcCode := refusal.statuses()
		s.mu.Lock()
		fin := s.failLocked(refusal, false, httpStatus, grpcCode, &cc.fl)
		s.mu.Unlock()
		if fin {
			s.cleanup(&cc.fl)
		}
		return nil
	}
	if err != nil {
		s.mu.Lock()
		fin := s.failLocked(fmt.Errorf("no route for %s%s: %w", h.Authority, h.Path, err), false, 503, grpcUnavailable, &cc.fl)
		s.mu.Unlock()
		if fin {
			s.cleanup(&cc.fl)
		}
		return nil
	}
	if route.Timeout > 0 || s.grpc {
		s.mu.Lock()
		s.startTimer()
		s.mu.Unlock()
	}
	srv.open(s, &cc.fl)
	return nil
}

// onTrailers handles request trailers (RFC 9113 §8.1: HEADERS with END_STREAM after DATA).
func (cc *clientConn) onTrailers(s *stream, end, selfDep bool) error {
	d := cc.dec
	fields, reason := parseTrailers(d.fields)
	if !end {
		reason = "second HEADERS without END_STREAM"
	} else if d.tooLarge {
		reason = "trailers too large"
	} else if d.bad != "" {
		reason = d.bad
	} else if selfDep {
		reason = "stream depends on itself (RFC 9113 §5.3.1)"
	}
	s.mu.Lock()
	var fin, closed, malformed bool
	switch {
	case s.done:
		closed = s.clientEnded
	case s.req.endRecv:
		fin = s.abortLocked(errors.New("client sent HEADERS on a half-closed stream"), http2.ErrCodeStreamClosed, true, false, &cc.fl)
	case reason == "" && s.reqLen >= 0 && s.req.bytes != s.reqLen:
		reason = "body does not match content-length (RFC 9113 §8.1.1)"
		fallthrough
	case reason != "":
		malformed = true
		fin = s.abortLocked(errors.New("malformed request trailers: "+reason), http2.ErrCodeProtocol, true, false, &cc.fl)
	default:
		// Kept for the drain below and for a replay; fields is the decoder's scratch.
		s.req.trailers, s.req.hasTrailer, s.req.endRecv = slices.Clone(fields), true, true
		s.clientEnded = true
		s.drain(&s.req, &cc.conn, s.id, s.upConn(), s.uid, &cc.fl)
		fin = s.complete() && s.finishLocked(nil, 0, false)
	}
	s.mu.Unlock()
	if fin {
		s.cleanup(&cc.fl)
	}
	if closed {
		return cc.streamClosed(s.id)
	}
	if malformed && !cc.takeResetToken() {
		return connError{http2.ErrCodeEnhanceYourCalm, "too many malformed requests"}
	}
	return nil
}

func (cc *clientConn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	flen := int32(f.Header().Length)
	fl := &cc.fl
	if cc.recvAvail.Add(-flen) < 0 {
		return connError{http2.ErrCodeFlowControl, "client exceeded the connection window"}
	}
	s := cc.lookup(id)
	if s == nil {
		if id > cc.maxID {
			return errIdle("DATA") // RFC 9113 §5.1
		}
		cc.grantConn(flen, fl) // a closed stream: keep the connection window whole (§5.1)
		if cc.closedState(id) == closedByEngine {
			return nil
		}
		return cc.streamClosed(id) // §6.1
	}
	data := f.Data()
	s.mu.Lock()
	var fin, malformed bool
	switch {
	case s.done:
		closed := s.clientEnded
		s.mu.Unlock()
		cc.grantConn(flen, fl)
		if closed {
			return cc.streamClosed(id)
		}
		return nil
	case s.req.endRecv:
		fin = s.abortLocked(errors.New("client sent DATA on a half-closed stream"), http2.ErrCodeStreamClosed, true, false, fl)
		s.mu.Unlock()
		cc.grantConn(flen, fl)
	default:
		s.req.recvAvail -= flen
		if s.req.recvAvail < 0 {
			fin = s.abortLocked(errClientFlow, http2.ErrCodeFlowControl, true, false, fl)
			s.mu.Unlock()
			cc.grantConn(flen, fl)
			break
		}
		if s.reqLen >= 0 {
			// RFC 9113 §8.1.1: checked before the bytes go upstream, so the upstream never
			// sees the end of a body that does not match its content-length.
			if n := s.req.bytes + int64(len(data)); n > s.reqLen || f.StreamEnded() && n != s.reqLen {
				malformed = true
				fin = s.abortLocked(errors.New("request body does not match its content-length"), http2.ErrCodeProtocol, true, false, fl)
				s.mu.Unlock()
				cc.grantConn(flen, fl)
				break
			}
		}
		if f.StreamEnded() {
			s.clientEnded = true
		}
		s.req.bytes += int64(len(data))
		s.deliver(&s.req, &cc.conn, id, s.upConn(), s.uid, data, f.StreamEnded(), fl)
		if pad := flen - int32(len(data)); pad > 0 {
			s.grantStream(&s.req, &cc.conn, id, pad, fl)
		}
		fin = s.complete() && s.finishLocked(nil, 0, false)
		s.mu.Unlock()
	}
	if fin {
		s.cleanup(fl)
	}
	if malformed && !cc.takeResetToken() {
		return connError{http2.ErrCodeEnhanceYourCalm, "too many malformed requests"}
	}
	return nil
}

func (cc *clientConn) onRST(f *http2.RSTStreamFrame) error {
	s := cc.lookup(f.StreamID)
	if s == nil {
		cc.mu.Lock()
		idle := f.StreamID > cc.maxID
		cc.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "RST_STREAM on an idle stream"}
		}
		return nil
	}
	s.mu.Lock()
	var fin bool
	if !s.done {
		s.clientEnded = true
		code := f.ErrCode
		if code == http2.ErrCodeNo {
			code = http2.ErrCodeCancel
		}
		s.rstUpstreamLocked(code, &cc.fl)
		s.req.endRecv, s.resp.endSent = true, true
		fin = s.finishLocked(fmt.Errorf("%w: %v", errClientReset, f.ErrCode), f.ErrCode, false)
	}
	s.mu.Unlock()
	if fin {
		s.cleanup(&cc.fl)
		// CVE-2023-44487: count resets of live streams; a flood gets ENHANCE_YOUR_CALM.
		if !cc.takeResetToken() {
			return connError{http2.ErrCodeEnhanceYourCalm, "too many stream resets"}
		}
	}
	return nil
}
