package h2

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// half is one direction of a stream: bytes from a source connection to a destination.
//
// buf[off:] is pending: received but not yet written, because the destination's window was
// closed or the upstream stream did not exist yet. While keep is set (request side, replayable),
// buf[:off] retains the bytes already written so the request can be replayed; base is the
// absolute body offset of buf[0] and forwarded the high-water mark of bytes written, which is what
// has been granted back to the source.
type half struct {
	bufp       *[]byte
	buf        []byte
	off        int
	base       int64
	forwarded  int64
	keep       bool
	sendWindow int32 // guarded by the destination conn's wmu
	inBlocked  bool  // on the destination conn's blocked list; guarded by its wmu
	recvAvail  int32 // what the source may still send on this stream
	grant      int32 // bytes forwarded but not yet granted back at stream level
	endRecv    bool  // the source ended its side (END_STREAM or trailers)
	endSent    bool  // END_STREAM written to the destination
	trailers   []hpack.HeaderField
	hasTrailer bool
	bytes      int64
}

func (h *half) pending() int { return len(h.buf) - h.off }

// append buffers p (the caller holds s.mu).
func (h *half) append(pool *bufPool, p []byte) {
	if len(p) == 0 {
		return
	}
	if !h.keep && h.off > 0 && len(h.buf)+len(p) > cap(h.buf) {
		n := copy(h.buf, h.buf[h.off:])
		h.base += int64(h.off)
		h.buf, h.off = h.buf[:n], 0
	}
	if need := len(h.buf) + len(p); need > cap(h.buf) {
		nb := pool.get(need)
		*nb = append((*nb)[:0], h.buf...)
		if h.bufp != nil {
			pool.put(h.bufp)
		}
		h.bufp = nb
		h.buf = *nb
	}
	h.buf = append(h.buf, p...)
}

// compact drops sent bytes and, if nothing is pending, returns the buffer to the pool.
func (h *half) compact(pool *bufPool) {
	if h.keep {
		return
	}
	if h.off == len(h.buf) {
		h.base += int64(h.off)
		h.off = 0
		h.buf = nil
		if h.bufp != nil {
			pool.put(h.bufp)
			h.bufp = nil
		}
	}
}

func (h *half) release(pool *bufPool) {
	h.buf, h.off, h.keep = nil, 0, false
	if h.bufp != nil {
		pool.put(h.bufp)
		h.bufp = nil
	}
}

// stream links a client stream to an upstream stream. Fields above mu are set before the stream
// is shared and never change.
type stream struct {
	srv   *Server
	cc    *clientConn
	id    uint32 // client-side stream id
	head  Head
	grpc  bool
	route Route
	start time.Time
	sent  time.Time // when the request headers went upstream (the last try's); zero if never
	// answered is when the upstream's final response headers arrived; zero if they did not.
	// Written under mu before done, read by cleanup after it.
	answered time.Time
	// reqLen is the request's content-length, -1 if none (RFC 9113 §8.1.1).
	reqLen int64
	// deadline is when the stream times out (Route.Timeout, grpc-timeout); zero if never. Set
	// before the stream goes upstream; the client connection's deadlines enforce it.
	deadline time.Time
	dlPos    int // position+1 in cc.dl's heap, 0 if not there; guarded by cc.dl.mu
	// fieldBuf backs head's fields for typical requests, saving an allocation per stream.
	fieldBuf [12]hpack.HeaderField

	closed atomic.Bool // mirrors done for lock-free checks by the pool
	// waitSince is the srv clock when the stream last joined a pool's queue.
	waitSince atomic.Int64

	mu         sync.Mutex
	up         *upConn // current upstream connection; nil while queued
	uid        uint32  // upstream stream id
	req        half    // client -> upstream; sendWindow guarded by up.wmu
	resp       half    // upstream -> client; sendWindow guarded by cc.wmu
	replayable bool
	gotFinal   bool // final response headers received: the upstream processed the request
	respHeads  bool // response headers sent to the client
	retries    int
	done       bool
	status     int
	grpcStatus int
	err        error
	rstCode    http2.ErrCode
	upFault    bool
	// clientEnded: the client ended its side (END_STREAM) or reset the stream, so what it sends
	// on it afterwards is its error (RFC 9113 §5.1). Set only while the stream is not done.
	clientEnded bool
	respLen     int64 // the response's content-length, -1 if none (RFC 9113 §8.1.1)
	upReset     bool  // RST_STREAM sent on the upstream stream: only one (RFC 9113 §5.4.2)
	timedOut    bool  // the deadline passed
	// stopSent: finishLocked queued RST_STREAM(NO_ERROR) to the client, which cleanup must flush:
	// the goroutine that finished the stream may have flushed the client before it queued it.
	stopSent bool
	lost     bool // the upstream connection was lost after the request went out
}

func (s *stream) upConn() *conn {
	if s.up == nil {
		return nil
	}
	return &s.up.conn
}

// deliver forwards data that the source sent on half h (request: from the client; response:
// from the upstream) and grants the forwarded bytes back to the source. The caller holds s.mu.
// dst is nil while the request waits for an upstream stream.
func (s *stream) deliver(h *half, src *conn, srcID uint32, dst *conn, dstID uint32, p []byte, end bool, fl *flusher) {
	if end {
		h.endRecv = true
	}
	sent := 0
	if dst != nil && h.pending() == 0 && !h.endSent {
		dst.wmu.Lock()
		if dst.werr == nil {
			var ended bool
			sent, ended = dst.writeDataLocked(s, h, dstID, p, end && !h.hasTrailer)
			if ended {
				h.endSent = true
			}
		}
		dst.wmu.Unlock()
		fl.add(dst)
	}
	if h.keep {
		// Replay bytes are bounded per stream and, so that many streams cannot pin
		// MaxConcurrentStreams × MaxReplayBytes, per client connection (ConnWindow).
		if len(h.buf)+len(p) > s.srv.cfg.MaxReplayBytes ||
			s.cc.replayBytes.Add(int64(len(p))) > int64(s.srv.cfg.ConnWindow) {
			if len(h.buf)+len(p) <= s.srv.cfg.MaxReplayBytes {
				s.cc.replayBytes.Add(-int64(len(p)))
			}
			s.dropReplay()
		} else {
			h.append(&s.srv.bufs, p)
			h.off += sent
			s.grantLocked(h, src, srcID, fl)
			return
		}
	}
	if sent > 0 {
		// Bytes written straight from the frame (nothing was pending): move the absolute
		// position of buf[0] past them before buffering the rest.
		h.base += int64(h.off) + int64(sent)
		h.buf, h.off = h.buf[:0], 0
		h.forwarded += int64(sent)
	}
	h.append(&s.srv.bufs, p[sent:])
	s.grantStream(h, src, srcID, int32(sent), fl)
}

// dropReplay makes the request non-replayable and frees bytes kept for replay.
func (s *stream) dropReplay() {
	s.replayable = false
	h := &s.req
	if !h.keep {
		return
	}
	h.keep = false
	s.cc.replayBytes.Add(-int64(len(h.buf)))
	if h.off > 0 {
		n := copy(h.buf, h.buf[h.off:])
		h.base += int64(h.off)
		h.buf, h.off = h.buf[:n], 0
	}
	h.compact(&s.srv.bufs)
}

// drain writes h's pending bytes (then END_STREAM or trailers) as far as the windows allow, and
// grants what it wrote back to the source. The caller holds s.mu.
func (s *stream) drain(h *half, src *conn, srcID uint32, dst *conn, dstID uint32, fl *flusher) {
	if dst == nil || h.endSent {
		return
	}
	dst.wmu.Lock()
	if dst.werr != nil {
		dst.wmu.Unlock()
		return
	}
	sent, ended := dst.writeDataLocked(s, h, dstID, h.buf[h.off:], h.endRecv && !h.hasTrailer)
	h.off += sent
	if !ended && h.hasTrailer && h.endRecv && h.pending() == 0 {
		dst.encFields(h.trailers, "")
		dst.frameHeaderBlock(dstID, true)
		ended = true
	}
	if ended {
		h.endSent = true
	}
	dst.wmu.Unlock()
	fl.add(dst)
	s.grantLocked(h, src, srcID, fl)
	h.compact(&s.srv.bufs)
}

// grantLocked grants the source whatever was written past the forwarded high-water mark.
func (s *stream) grantLocked(h *half, src *conn, srcID uint32, fl *flusher) {
	abs := h.base + int64(h.off)
	if abs <= h.forwarded {
		return
	}
	n := int32(abs - h.forwarded)
	h.forwarded = abs
	s.grantStream(h, src, srcID, n, fl)
}

func (s *stream) grantStream(h *half, src *conn, srcID uint32, n int32, fl *flusher) {
	if src == nil || n <= 0 {
		return
	}
	src.grantConn(n, fl)
	if h.endRecv {
		return // the source will send nothing more on this stream
	}
	h.grant += n
	if h.grant < int32(s.srv.cfg.InitialWindow/4) {
		return
	}
	src.wmu.Lock()
	src.frameWindowUpdate(srcID, uint32(h.grant))
	src.wmu.Unlock()
	h.recvAvail += h.grant
	h.grant = 0
	fl.add(src)
}

// writeDataLocked writes p as DATA frames within the stream and connection windows, the peer's
// frame size and the room in c's output queue (maxQueuedData), ending the stream after the last
// byte when end is set. It returns the bytes written and whether END_STREAM went out. If the
// connection window or the queue stopped it (not the stream's own window), the stream joins
// c.blocked. The caller holds s.mu and c.wmu.
func (c *conn) writeDataLocked(s *stream, h *half, id uint32, p []byte, end bool) (int, bool) {
	sent := 0
	for len(p) > 0 {
		n := min(len(p), int(h.sendWindow), int(c.sendWindow), int(c.peerMaxFrame), maxDataFrame)
		if n > 0 && c.queued()+n > maxQueuedData {
			n = 0 // the peer is not taking what is queued: wait for the writer like for a window
		}
		if n <= 0 {
			if h.sendWindow > 0 && !h.inBlocked {
				h.inBlocked = true
				if len(c.blocked) >= 64 && len(c.blocked) == cap(c.blocked) {
					// A peer that never reopens its connection window must not grow this list
					// with streams that ended meanwhile.
					c.blocked = slices.DeleteFunc(c.blocked, func(x *stream) bool { return x.closed.Load() })
				}
				c.blocked = append(c.blocked, s)
			}
			return sent, false
		}
		last := end && n == len(p)
		c.frameData(id, last, p[:n])
		h.sendWindow -= int32(n)
		c.sendWindow -= int32(n)
		sent += n
		p = p[n:]
		if last {
			return sent, true
		}
	}
	if end {
		c.frameData(id, true, nil)
		return sent, true
	}
	return sent, false
}

// complete reports whether both directions ended; the caller then finishes the stream.
func (s *stream) complete() bool { return s.req.endSent && s.resp.endSent }

// finishLocked marks the stream done and records how it ended. The caller holds s.mu and must
// call cleanup after unlocking. It returns false if the stream was already done.
func (s *stream) finishLocked(err error, code http2.ErrCode, upFault bool) bool {
	if s.done {
		return false
	}
	s.done = true
	s.closed.Store(true)
	if !s.deadline.IsZero() {
		s.cc.dl.remove(s)
	}
	if s.err == nil {
		s.err, s.rstCode, s.upFault = err, code, upFault
	}
	// The response is complete but the client is still sending: tell it to stop (RFC 9113 §8.1).
	if err == nil && !s.req.endRecv {
		s.cc.wmu.Lock()
		s.cc.frameRST(s.id, http2.ErrCodeNo)
		s.cc.wmu.Unlock()
		s.stopSent = true
	}
	if s.req.keep {
		s.cc.replayBytes.Add(-int64(len(s.req.buf)))
	}
	s.req.release(&s.srv.bufs)
	s.resp.release(&s.srv.bufs)
	return true
}

// cleanup unlinks a finished stream and reports it. No locks held. After done is set, s.up and
// the result fields no longer change.
func (s *stream) cleanup(fl *flusher) {
	if s.stopSent {
		fl.add(&s.cc.conn)
	}
	s.cc.removeStream(s)
	if u := s.up; u != nil {
		u.removeStream(s.uid, s)
		u.pool.release(u, fl)
	}
	if s.route.Done != nil {
		s.route.Done(Result{
			Addr:       s.route.Addr,
			Status:     s.status,
			GRPCStatus: s.grpcStatus,
			Err:        s.err,
			ResetCode:  s.rstCode,
			Upstream:   s.upFault,
			Duration:   time.Since(s.start),
			Queued:     s.queued(),
			Headers:    s.headersAfter(),
			ReqBytes:   s.req.bytes,
			RespBytes:  s.resp.bytes,
			Retries:    s.retries,
			TimedOut:   s.timedOut,
		})
	}
}

// headersAfter is how long the upstream took to answer with its response headers, 0 if it
// did not.
func (s *stream) headersAfter() time.Duration {
	if s.answered.IsZero() || s.sent.IsZero() {
		return 0
	}
	return s.answered.Sub(s.sent)
}

// queued is how long the stream waited for an upstream connection or stream slot.
func (s *stream) queued() time.Duration {
	if s.sent.IsZero() {
		return time.Since(s.start)
	}
	return s.sent.Sub(s.start)
}

// rstUpstreamLocked resets the upstream stream, if there is one. The caller holds s.mu.
func (s *stream) rstUpstreamLocked(code http2.ErrCode, fl *flusher) {
	if s.up == nil || s.upReset || (s.req.endSent && s.resp.endRecv) {
		return
	}
	s.upReset = true
	u := &s.up.conn
	u.wmu.Lock()
	u.frameRST(s.uid, code)
	u.wmu.Unlock()
	fl.add(u)
}

// failLocked ends the stream with an error the engine answers itself: a synthesized response if
// none has been sent (gRPC: trailers-only with grpcCode; otherwise httpStatus and msg as body),
// grpc-status trailers if the response is under way and nothing is buffered, else RST_STREAM.
// The upstream stream, if any, is reset with CANCEL. The caller holds s.mu and calls cleanup if
// it returns true.
func (s *stream) failLocked(err error, upFault bool, httpStatus, grpcCode int, fl *flusher) bool {
	if s.done {
		return false
	}
	s.rstUpstreamLocked(http2.ErrCodeCancel, fl)
	cc := &s.cc.conn
	msg := err.Error()
	code := http2.ErrCodeNo
	cc.wmu.Lock()
	switch {
	case s.resp.endSent:
	case !s.respHeads && s.grpc:
		cc.encField(":status", "200", false)
		cc.encField("content-type", "application/grpc", false)
		if s.lost && s.route.MeshClient {
			cc.encField(ProxyErrorHeader, "reset", false)
		}
		cc.encField("grpc-status", strconv.Itoa(grpcCode), false)
		cc.encField("grpc-message", encodeGRPCMessage(msg), false)
		cc.frameHeaderBlock(s.id, true)
		s.status, s.grpcStatus = 200, grpcCode
	case !s.respHeads:
		body := msg + "\n"
		cc.encField(":status", statusText(httpStatus), false)
		cc.encField("content-type", "text/plain; charset=utf-8", false)
		if s.lost && s.route.MeshClient {
			cc.encField(ProxyErrorHeader, "reset", false)
		}
		fits := int(s.resp.sendWindow) >= len(body) && int(cc.sendWindow) >= len(body) && int(cc.peerMaxFrame) >= len(body)
		cc.frameHeaderBlock(s.id, !fits)
		if fits {
			cc.frameData(s.id, true, []byte(body))
			s.resp.sendWindow -= int32(len(body))
			cc.sendWindow -= int32(len(body))
		}
		s.status = httpStatus
	case s.grpc && s.resp.pending() == 0 && !s.resp.hasTrailer:
		cc.encField("grpc-status", strconv.Itoa(grpcCode), false)
		cc.encField("grpc-message", encodeGRPCMessage(msg), false)
		cc.frameHeaderBlock(s.id, true)
		s.grpcStatus = grpcCode
	case err == ErrDeadline:
		// Its response under way, a stream past its deadline is cancelled, as a gRPC server
		// does: a client reads CANCEL after its own deadline as DEADLINE_EXCEEDED (grpc-go
		// does), where INTERNAL_ERROR would read as a failure of the server.
		code = http2.ErrCodeCancel
		cc.frameRST(s.id, code)
	default:
		code = http2.ErrCodeInternal
		cc.frameRST(s.id, code)
	}
	s.respHeads = true
	s.resp.endSent = true
	if !s.req.endRecv && code == http2.ErrCodeNo {
		cc.frameRST(s.id, http2.ErrCodeNo) // stop the client's upload (RFC 9113 §8.1)
	}
	cc.wmu.Unlock()
	fl.add(cc)
	s.req.endRecv = true // no RST_STREAM(NO_ERROR) again in finishLocked
	return s.finishLocked(err, code, upFault)
}

// abortLocked resets the client stream with code (an upstream reset passed through, or a
// protocol error) and, if resetUpstream, the upstream stream with CANCEL. The caller holds s.mu and
// calls cleanup if it returns true.
func (s *stream) abortLocked(err error, code http2.ErrCode, resetUpstream, upFault bool, fl *flusher) bool {
	if s.done {
		return false
	}
	if resetUpstream {
		s.rstUpstreamLocked(http2.ErrCodeCancel, fl)
	}
	cc := &s.cc.conn
	cc.wmu.Lock()
	cc.frameRST(s.id, code)
	cc.wmu.Unlock()
	fl.add(cc)
	s.req.endRecv = true
	return s.finishLocked(err, code, upFault)
}

// retryLocked detaches a stream the upstream refused unprocessed so it can be replayed on
// another connection to the same endpoint (there is no Retrier). It returns the connection whose
// slot the caller must release (after unlocking) before re-opening the stream, or nil when the
// stream is not replayable.
func (s *stream) retryLocked() *upConn {
	if s.done || s.gotFinal || !s.replayable || s.retries >= s.srv.cfg.MaxRetries || s.up == nil {
		return nil
	}
	return s.detachLocked()
}

// detachLocked takes s off its upstream attempt so that it can be sent again from its first
// byte: every request byte is at hand (kept for replay, or never sent) and nothing of the
// response has reached the client. It returns the connection whose slot the caller releases
// after unlocking, nil if s was not on one. The caller holds s.mu.
func (s *stream) detachLocked() *upConn {
	old := s.up
	if old != nil {
		old.removeStream(s.uid, s)
		old.wmu.Lock()
		if s.req.inBlocked {
			// Leave no trace on the old connection's blocked list: its window updates must not
			// touch a half now guarded by another connection's lock.
			old.blocked = slices.DeleteFunc(old.blocked, func(x *stream) bool { return x == s })
			s.req.inBlocked = false
		}
		old.wmu.Unlock()
	}
	s.up, s.uid, s.upReset = nil, 0, false
	s.retries++
	s.req.off = 0
	s.req.endSent = false
	s.gotFinal, s.status, s.grpcStatus, s.respLen, s.answered = false, 0, -1, -1, time.Time{}
	s.resp.release(&s.srv.bufs)
	s.resp.endRecv, s.resp.bytes, s.resp.trailers, s.resp.hasTrailer = false, 0, nil, false
	s.resp.recvAvail, s.resp.grant = int32(s.srv.cfg.InitialWindow), 0 // nothing was received yet
	return old
}

// canResend reports whether a stream that reached the upstream may be sent again: its client's
// request has ended and is kept whole, and no response reached the client. The caller holds
// s.mu.
func (s *stream) canResend() bool {
	return s.route.Retry != nil && s.replayable && s.req.endRecv && !s.respHeads && !s.done
}

// resend is a stream sent again (againLocked), for the caller to finish after unlocking.
type resend struct {
	s     *stream
	old   *upConn // whose slot to release
	prev  Route   // the failed attempt's route, whose Done is called
	res   Result
	delay time.Duration
}

// againLocked asks the stream's Retrier where a failed attempt goes next. When it answers, s is
// detached and routed anew, and the caller must call the returned resend's run after unlocking;
// nil means the failure stands (the caller fails the stream). The caller holds s.mu and has
// checked that the request can be sent again (see Retrier).
func (s *stream) againLocked(reason RetryReason, status, grpcStatus int, err error, fl *flusher) *resend {
	r := s.route.Retry
	if r == nil || s.done {
		return nil
	}
	a := Attempt{Head: &s.head, Addr: s.route.Addr, Reason: reason, Status: status, GRPCStatus: grpcStatus, Err: err,
		Attempts: s.retries + 1}
	if !s.deadline.IsZero() {
		if a.Remaining = time.Until(s.deadline); a.Remaining <= 0 {
			return nil // never retry what has timed out
		}
	}
	next, delay, ok := r.Retry(&a)
	if !ok || !next.Addr.IsValid() {
		return nil
	}
	if reason == RetryStatus {
		// The response held back may still be streaming: stop it (the upstream sees CANCEL).
		s.rstUpstreamLocked(http2.ErrCodeCancel, fl)
	}
	rs := &resend{s: s, prev: s.route, delay: delay}
	rs.res = Result{Addr: s.route.Addr, Status: status, GRPCStatus: grpcStatus, Err: err, Upstream: true,
		Duration: time.Since(s.start), Queued: s.queued(), Headers: s.headersAfter(),
		ReqBytes: s.req.bytes, Retries: s.retries, Retried: true, Reason: reason}
	rs.old = s.detachLocked()
	next.Timeout = 0 // the deadline was set once, from the first route
	s.route = next
	return rs
}

// run releases the failed attempt's slot, reports it, and sends the stream to its new route,
// at once or after the delay. No locks held.
func (rs *resend) run(fl *flusher) {
	s := rs.s
	if rs.old != nil {
		rs.old.pool.release(rs.old, fl)
	}
	if rs.prev.Done != nil {
		rs.prev.Done(rs.res)
	}
	if rs.delay <= 0 {
		s.srv.open(s, fl)
		return
	}
	time.AfterFunc(rs.delay, func() {
		if s.closed.Load() {
			return
		}
		var fl flusher
		s.srv.open(s, &fl)
		fl.flush()
	})
}

// startTimer sets the stream's deadline, the shorter of the route's timeout and the request's
// grpc-timeout, and has the client connection's deadlines enforce it (one timer per connection,
// not per stream). Called once, with s.mu held, before the stream goes upstream.
func (s *stream) startTimer() {
	d := s.route.Timeout
	if s.grpc {
		if v := s.head.Get("grpc-timeout"); v != "" {
			if g, ok := parseGRPCTimeout(v); ok && (d <= 0 || g < d) {
				d = g
			}
		}
	}
	if d <= 0 {
		return
	}
	s.deadline = s.start.Add(d)
	s.cc.dl.add(s)
}

// expire ends a stream whose deadline passed: the upstream stream is reset with CANCEL (so the
// server sees the cancellation) and the client answered DEADLINE_EXCEEDED or 504.
func (s *stream) expire() {
	var fl flusher
	s.mu.Lock()
	var fin bool
	if !s.done {
		s.timedOut = true
		fin = s.failLocked(ErrDeadline, false, 504, grpcDeadlineExceeded, &fl)
	}
	s.mu.Unlock()
	if fin {
		s.cleanup(&fl)
	}
	fl.flush()
}

var (
	errClientReset  = errors.New("client reset the stream")
	errClientGone   = errors.New("client connection closed")
	errUpstreamGone = errors.New("upstream connection lost")
)

func upstreamReset(code http2.ErrCode) error {
	return fmt.Errorf("upstream reset the stream: %v", code)
}
