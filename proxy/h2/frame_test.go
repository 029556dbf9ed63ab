package h2

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func isRST(id uint32, code http2.ErrCode) func(http2.Frame) bool {
	return func(f http2.Frame) bool {
		r, ok := f.(*http2.RSTStreamFrame)
		return ok && r.StreamID == id && r.ErrCode == code
	}
}

func isHeaders(id uint32) func(http2.Frame) bool {
	return func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == id
	}
}

// okUpstream answers every request with a gRPC OK carrying the given extra response fields,
// and sends the request it saw to seen (if not nil).
func okUpstream(t *testing.T, seen chan<- *http2.MetaHeadersFrame, extra ...string) *rawUpstream {
	return startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		if seen != nil {
			seen <- f
		}
		kv := append([]string{":status", "200", "content-type", "application/grpc"}, extra...)
		sc.headers(f.StreamID, false, kv...)
		sc.data(f.StreamID, false, grpcFrame([]byte("ok")))
		sc.headers(f.StreamID, true, "grpc-status", "0")
	})
}

func TestMalformedRequestsAreStreamErrors(t *testing.T) {
	ru := okUpstream(t, nil)
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr)})
	cases := []struct {
		name string
		kv   []string
	}{
		{"NUL in a value", reqHeaders("x-a", "a\x00b")},
		{"CR in a value", reqHeaders("x-a", "a\rb")},
		{"LF in a value", reqHeaders("x-a", "a\nb")},
		{"uppercase name", reqHeaders("X-Upper", "v")},
		{"space in a name", reqHeaders("x a", "v")},
		{"missing :path", []string{":method", "GET", ":scheme", "http", ":authority", "a"}},
		{"missing :method", []string{":scheme", "http", ":path", "/", ":authority", "a"}},
		{"duplicate :method", []string{":method", "GET", ":method", "GET", ":scheme", "http", ":path", "/"}},
		{"pseudo-header after a regular field", []string{":method", "GET", "x-a", "b", ":scheme", "http", ":path", "/"}},
		{":status in a request", []string{":method", "GET", ":scheme", "http", ":path", "/", ":status", "200"}},
		{"unknown pseudo-header", []string{":method", "GET", ":scheme", "http", ":path", "/", ":foo", "x"}},
		{":protocol without extended CONNECT", []string{":method", "CONNECT", ":protocol", "websocket", ":scheme", "http", ":path", "/"}},
		{"relative :path", []string{":method", "GET", ":scheme", "http", ":path", "abc"}},
	}
	rc := dialRaw(t, addr)
	id := uint32(1)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc.t = t
			rc.headers(id, true, c.kv...)
			rc.until("RST_STREAM PROTOCOL_ERROR", isRST(id, http2.ErrCodeProtocol))
		})
		id += 2
	}
	rc.t = t
	// The connection survives stream errors: a valid request still works.
	rc.headers(id, true, reqHeaders()...)
	h := rc.until("response", isHeaders(id)).(*http2.MetaHeadersFrame)
	if fieldValue(h, ":status") != "200" {
		t.Fatalf("status %q", fieldValue(h, ":status"))
	}
}

func TestConnectIsRefusedWith405(t *testing.T) {
	ru := okUpstream(t, nil)
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr)})
	rc := dialRaw(t, addr)
	rc.headers(1, false, ":method", "CONNECT", ":authority", "example.com:443")
	h := rc.until("response", isHeaders(1)).(*http2.MetaHeadersFrame)
	if got := fieldValue(h, ":status"); got != "405" {
		t.Fatalf("status %q, want 405", got)
	}
}

func TestHeaderListTooLargeGets431(t *testing.T) {
	ru := okUpstream(t, nil)
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), MaxHeaderListSize: 4096})
	rc := dialRaw(t, addr)
	big := strings.Repeat("v", 3000)
	rc.headers(1, true, reqHeaders("x-a", big, "x-b", big)...)
	h := rc.until("response", isHeaders(1)).(*http2.MetaHeadersFrame)
	if got := fieldValue(h, ":status"); got != "431" {
		t.Fatalf("status %q, want 431", got)
	}
	// HPACK stayed in sync: the next request on the connection works.
	rc.headers(3, true, reqHeaders()...)
	if got := fieldValue(rc.until("response", isHeaders(3)).(*http2.MetaHeadersFrame), ":status"); got != "200" {
		t.Fatalf("status after 431 = %q", got)
	}
}

func TestUpstream101IsNotTunnelled(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		sc.headers(f.StreamID, false, ":status", "101", "upgrade", "websocket")
	})
	rec := newRecorder(ru.addr)
	addr, _, _ := startProxy(t, Config{Router: rec})
	rc := dialRaw(t, addr)
	rc.headers(1, true, ":method", "GET", ":scheme", "http", ":path", "/", ":authority", "a")
	h := rc.until("response", isHeaders(1)).(*http2.MetaHeadersFrame)
	if got := fieldValue(h, ":status"); got != "502" {
		t.Fatalf("status %q, want 502", got)
	}
	if res := rec.waitResult(t); !res.Upstream {
		t.Errorf("Result not attributed to the upstream: %+v", res)
	}
}

func TestMaxConcurrentStreamsRefusesExtraStreams(t *testing.T) {
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {}) // never answers
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), MaxConcurrentStreams: 2})
	rc := dialRaw(t, addr)
	rc.headers(1, true, reqHeaders()...)
	rc.headers(3, true, reqHeaders()...)
	rc.headers(5, true, reqHeaders()...)
	rc.until("REFUSED_STREAM for the third stream", isRST(5, http2.ErrCodeRefusedStream))
}

func TestRapidResetFloodGetsEnhanceYourCalm(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {})
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), ResetBurst: 50, ResetRate: 10})
	rc := dialRaw(t, addr)
	go func() {
		for id := uint32(1); id < 2000; id += 2 {
			err := rc.do(func(fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.block(reqHeaders()...), EndStream: true, EndHeaders: true}); err != nil {
					return err
				}
				return fr.WriteRSTStream(id, http2.ErrCodeCancel)
			})
			if err != nil {
				return
			}
		}
	}()
	g, closed := rc.closedAfter()
	if !closed || g == nil || g.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("closed=%v goaway=%v, want GOAWAY ENHANCE_YOUR_CALM and close", closed, g)
	}
	// The proxy is still up for others.
	rc2 := dialRaw(t, addr)
	rc2.fr.WriteSettings()
	rc2.fr.WritePing(false, [8]byte{1})
	rc2.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := rc2.fr.ReadFrame()
		if err != nil {
			t.Fatalf("new connection after the flood: %v", err)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			break
		}
	}
}

func TestContinuationFloodClosesConnection(t *testing.T) {
	ru := okUpstream(t, nil)
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), MaxHeaderListSize: 8 << 10})
	for _, tc := range []struct {
		name string
		frag []byte
	}{
		{"empty fragments", nil},
		{"1 KiB fragments", bytes.Repeat([]byte{0x40, 1, 'a', 1, 'b'}, 200)}, // literal fields with indexing
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, addr)
			blk := rc.block(reqHeaders()...)
			go func() {
				rc.mu.Lock() // this goroutine owns the writes; the reader will not ack anything
				defer rc.mu.Unlock()
				if rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: false}) != nil {
					return
				}
				for i := 0; i < 100000; i++ {
					if rc.fr.WriteContinuation(1, false, tc.frag) != nil {
						return
					}
				}
			}()
			g, closed := rc.closedAfter()
			if !closed || g == nil || g.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("closed=%v goaway=%v", closed, g)
			}
		})
	}
}

func TestGracefulShutdown(t *testing.T) {
	release := make(chan struct{})
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		id := f.StreamID
		go func() {
			<-release
			sc.respondGRPC(id, []byte("late"))
		}()
	})
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ru.addr)})
	rc := dialRaw(t, addr)
	rc.headers(1, true, reqHeaders()...)
	waitFor(t, "stream to reach the upstream", func() bool { return ru.conns.Load() == 1 && bufferedStreams(srv) == 1 })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	g := rc.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if g.LastStreamID != 1 || g.ErrCode != http2.ErrCodeNo {
		t.Fatalf("GOAWAY last=%d code=%v, want last=1 NO_ERROR", g.LastStreamID, g.ErrCode)
	}
	rc.headers(3, true, reqHeaders()...)
	rc.until("new stream refused", isRST(3, http2.ErrCodeRefusedStream))
	close(release)
	h := rc.until("in-flight response", isHeaders(1)).(*http2.MetaHeadersFrame)
	if fieldValue(h, ":status") != "200" {
		t.Fatal("in-flight stream did not finish")
	}
	if _, closed := rc.closedAfter(); !closed {
		t.Fatal("connection not closed after its last stream")
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func bufferedStreams(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	n := 0
	for cc := range srv.clients {
		n += cc.streamCount()
	}
	return n
}

func TestUpstreamGoAwayReplaysUnprocessedStreams(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		if n == 1 {
			sc.goAway(0, http2.ErrCodeNo) // processed nothing
			return
		}
		sc.respondGRPC(f.StreamID, []byte("second"))
	})
	rec := newRecorder(ru.addr)
	addr, _, _ := startProxy(t, Config{Router: rec})
	cc := dialGRPC(t, addr)
	in, out := []byte("body"), []byte(nil)
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatal(err)
	}
	if string(out) != "second" {
		t.Fatalf("got %q", out)
	}
	if res := rec.waitResult(t); res.Retries != 1 || res.Err != nil {
		t.Errorf("Result = %+v, want one retry", res)
	}
}

func TestRefusedStreamIsReplayedWithItsBody(t *testing.T) {
	bodies := make(chan int, 4)
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {})
	ru.onData = func(sc *rawServerConn, f *http2.DataFrame) {
		if !f.StreamEnded() {
			return
		}
		bodies <- len(f.Data())
		if f.StreamID == 1 {
			sc.rst(1, http2.ErrCodeRefusedStream)
			return
		}
		sc.respondGRPC(f.StreamID, []byte("ok"))
	}
	rec := newRecorder(ru.addr)
	addr, _, _ := startProxy(t, Config{Router: rec})
	cc := dialGRPC(t, addr)
	in, out := bytes.Repeat([]byte("b"), 2000), []byte(nil)
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatal(err)
	}
	if a, b := <-bodies, <-bodies; a != b || a != 2005 {
		t.Errorf("first attempt carried %d bytes, replay %d", a, b)
	}
	if res := rec.waitResult(t); res.Retries != 1 {
		t.Errorf("Result = %+v", res)
	}
}

func TestUpstreamResetReachesClient(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		sc.headers(f.StreamID, false, ":status", "200", "content-type", "application/grpc")
		sc.rst(f.StreamID, http2.ErrCodeCancel)
	})
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr)})
	cc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); status.Code(err) != codes.Canceled {
		t.Fatalf("got %v, want Canceled from the upstream's RST_STREAM(CANCEL)", err)
	}
}

func TestBrokenUpstreamFailsOnlyItsStreams(t *testing.T) {
	good := startGRPCServer(t, "good")
	bad := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		sc.c.Close() // dies holding the stream
	})
	rec := newRecorder(bad.addr, good.addr)
	addr, _, accepted := startProxy(t, Config{Router: rec})
	cc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	err := cc.Invoke(ctxT(t), mUnary, &in, &out)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stream on the broken upstream: %v, want Unavailable", err)
	}
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatalf("stream on the healthy upstream: %v", err)
	}
	if accepted.Load() != 1 {
		t.Errorf("client connection was lost: %d connections", accepted.Load())
	}
}

func TestIdleUpstreamConnectionsClose(t *testing.T) {
	ru := okUpstream(t, nil)
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), UpstreamIdleTimeout: 50 * time.Millisecond})
	rc := dialRaw(t, addr)
	rc.headers(1, true, reqHeaders()...)
	rc.until("response", isHeaders(1))
	waitFor(t, "idle upstream connection to close", func() bool { return ru.closed.Load() == 1 })
	// A new stream dials again.
	rc.headers(3, true, reqHeaders()...)
	rc.until("response", isHeaders(3))
	if ru.conns.Load() != 2 {
		t.Errorf("%d upstream connections", ru.conns.Load())
	}
}

func TestSlowUpstreamBackpressuresTheClient(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		sc.headers(f.StreamID, false, ":status", "200", "content-type", "application/grpc")
	})
	ru.noGrant = true // reads nothing beyond the initial 65535-byte windows
	const window = 128 << 10
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ru.addr), InitialWindow: window})
	cc := dialGRPC(t, addr, grpc.WithInitialWindowSize(64<<10))
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	st, err := cc.NewStream(ctx, descClient, mClientStream)
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan int, 1)
	go func() {
		msg := make([]byte, 128<<10)
		n := 0
		for i := 0; i < 64; i++ { // 8 MiB, far beyond every window
			if st.SendMsg(&msg) != nil {
				break
			}
			n++
		}
		sent <- n
	}()
	// Both windows full: the upstream took the 65535 bytes it granted and the client used all the
	// credit the engine gave it. The engine batches WINDOW_UPDATE (InitialWindow/4), so up to that
	// much of what it forwarded may be credit it has not yet returned: the client's window is then
	// filled by the buffered bytes plus that withheld credit, not by the buffered bytes alone.
	waitFor(t, "the client to fill both windows", func() bool {
		w := reqWindow(srv)
		return ru.received.Load() >= 65535 && w.ok && w.avail == 0
	})
	w := reqWindow(srv)
	if w.pending > window {
		t.Errorf("engine buffered %d request bytes; it advertised %d", w.pending, window)
	}
	if w.pending+w.withheld != window {
		t.Errorf("engine buffers %d request bytes and withholds %d of credit; want them to make the %d it advertised",
			w.pending, w.withheld, window)
	}
	if r := ru.received.Load(); r > 65535 {
		t.Errorf("upstream received %d bytes; it granted 65535", r)
	}
	cancel()
	if n := <-sent; n >= 64 {
		t.Errorf("client sent all %d messages without backpressure", n)
	}
}

func TestUnansweredKeepaliveFailsUpstreamStreams(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {}) // never answers, never acks PING
	rec := newRecorder(ru.addr)
	addr, _, _ := startProxy(t, Config{Router: rec, UpstreamKeepalive: 50 * time.Millisecond})
	cc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable once the silent upstream is dropped", err)
	}
	if res := rec.waitResult(t); !res.Upstream {
		t.Errorf("Result = %+v", res)
	}
}

func TestClientThatStopsReadingDoesNotStallSharedUpstream(t *testing.T) {
	ts := startGRPCServer(t, "a")
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ts.addr), WriteTimeout: 200 * time.Millisecond, Logger: discardLogger()})
	// A raw client grants a huge window, asks for 1 GiB of server stream and never reads.
	rc := dialRaw(t, addr)
	rc.do(func(fr *http2.Framer) error {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		return fr.WriteWindowUpdate(0, 1<<31-1-65535)
	})
	rc.headers(1, false, ":method", "POST", ":scheme", "http", ":authority", "a", ":path", mServerStream, "content-type", "application/grpc", "te", "trailers")
	req := grpcFrame(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 1024), 1<<20))
	rc.do(func(fr *http2.Framer) error { return fr.WriteData(1, true, req) })
	waitFor(t, "the engine's write to block", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for cc := range srv.clients {
			if cc.stalled.Load() != 0 {
				return true
			}
		}
		return false
	})
	// Another client on the same upstream connection still gets answers.
	gc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	if err := gc.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatalf("call behind a stuck client: %v", err)
	}
	if ts.conns.Load() != 1 {
		t.Errorf("%d upstream connections, want the shared one", ts.conns.Load())
	}
	waitFor(t, "the stuck client connection to be closed", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.clients) == 1
	})
}

func TestUpstreamLostMidResponseEndsWithUnavailableTrailers(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		sc.headers(f.StreamID, false, ":status", "200", "content-type", "application/grpc")
		sc.data(f.StreamID, false, grpcFrame([]byte("first")))
		time.AfterFunc(20*time.Millisecond, func() { sc.c.Close() })
	})
	rec := newRecorder(ru.addr)
	addr, _, _ := startProxy(t, Config{Router: rec})
	cc := dialGRPC(t, addr)
	st, err := cc.NewStream(ctxT(t), descServer, mServerStream)
	if err != nil {
		t.Fatal(err)
	}
	m := []byte("x")
	st.SendMsg(&m)
	st.CloseSend()
	var got []byte
	if err := st.RecvMsg(&got); err != nil || string(got) != "first" {
		t.Fatalf("first message: %q, %v", got, err)
	}
	err = st.RecvMsg(&got)
	if s := status.Convert(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "upstream connection lost") {
		t.Fatalf("after the upstream died: %v, want Unavailable naming the lost upstream", err)
	}
	if res := rec.waitResult(t); !res.Upstream || res.GRPCStatus != 14 {
		t.Errorf("Result = %+v", res)
	}
}

func TestQueueBoundFailsFastWithUnavailable(t *testing.T) {
	seen := make(chan uint32, 200)
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) { seen <- f.StreamID }) // holds every stream
	ru.settings = []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 1}}
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ru.addr), MaxConnsPerEndpoint: 1, MaxQueuedPerEndpoint: 2})
	rc := dialRaw(t, addr)
	rc.headers(1, true, reqHeaders()...)
	<-seen // the pooled connection is up and its one stream slot taken
	waitFor(t, "the upstream's SETTINGS to apply", func() bool {
		p := srv.pool(ru.addr)
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.conns) == 1 && p.conns[0].maxStreams == 1
	})
	for _, id := range []uint32{3, 5, 7} { // two queue, the third is refused
		rc.headers(id, true, reqHeaders()...)
	}
	h := rc.until("a synthesized answer", isHeaders(7)).(*http2.MetaHeadersFrame)
	if fieldValue(h, "grpc-status") != "14" || !strings.Contains(fieldValue(h, "grpc-message"), "too many streams waiting") {
		t.Fatalf("got %v", h.Fields)
	}
}

// TestUpstreamGoAwayDialsForQueuedStreams: a stream queued for a slot on the one connection an
// endpoint may have is sent on a new connection when that connection's GOAWAY drains it.
func TestUpstreamGoAwayDialsForQueuedStreams(t *testing.T) {
	first := make(chan *rawServerConn, 1)
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		if n == 1 {
			first <- sc // holds the one slot until the test answers
			return
		}
		sc.respondGRPC(f.StreamID, []byte("second"))
	})
	ru.settings = []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 1}}
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ru.addr), MaxConnsPerEndpoint: 1})
	cc := dialGRPC(t, addr)
	call := func(done chan<- error) {
		in, out := []byte("body"), []byte(nil)
		done <- cc.Invoke(ctxT(t), mUnary, &in, &out)
	}
	held, queued := make(chan error, 1), make(chan error, 1)
	go call(held)
	sc := <-first
	p := srv.pool(ru.addr)
	waitFor(t, "the upstream's stream limit to reach the proxy", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.conns) == 1 && p.conns[0].maxStreams == 1
	})
	go call(queued)
	waitFor(t, "the second call to queue for the slot", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.waiters) == 1
	})
	sc.goAway(1, http2.ErrCodeNo) // the held stream goes on; no new one here
	if err := <-queued; err != nil {
		t.Fatalf("the queued call after the GOAWAY: %v", err)
	}
	sc.respondGRPC(1, []byte("first"))
	if err := <-held; err != nil {
		t.Fatalf("the held call: %v", err)
	}
	if n := ru.conns.Load(); n != 2 {
		t.Fatalf("the upstream accepted %d connections, want 2", n)
	}
}

// TestInternalHeadersStopAtTheEngine: a client's own detour-attempt does not reach the upstream
// from an application (it does from a peer proxy, a MeshClient: the application is told its
// count), and a detour-proxy-error mark in a forwarded response never reaches the client, the
// other headers passing as they are.
func TestInternalHeadersStopAtTheEngine(t *testing.T) {
	for _, mesh := range []bool{false, true} {
		t.Run(fmt.Sprintf("MeshClient=%v", mesh), func(t *testing.T) {
			attempts := make(chan string, 1)
			ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
				attempts <- f.PseudoValue("method") + " " + headerValue(f, AttemptHeader)
				sc.headers(f.StreamID, true, ":status", "200", "content-type", "application/grpc", "grpc-status", "0", ProxyErrorHeader, "reset", "x-app", "kept")
			})
			router := RouterFunc(func(netip.AddrPort, *Head) (Route, error) {
				return Route{Addr: ru.addr, MeshClient: mesh}, nil
			})
			addr, _, _ := startProxy(t, Config{Router: router})
			rc := dialRaw(t, addr)
			rc.headers(1, true, reqHeaders(AttemptHeader, "7")...)
			resp := rc.until("the response", func(f http2.Frame) bool {
				h, ok := f.(*http2.MetaHeadersFrame)
				return ok && h.StreamID == 1
			}).(*http2.MetaHeadersFrame)
			if v := headerValue(resp, ProxyErrorHeader); v != "" {
				t.Errorf("the client got %s: %s, an internal mark", ProxyErrorHeader, v)
			}
			if v := headerValue(resp, "x-app"); v != "kept" {
				t.Errorf("the client got x-app %q, want the upstream's header passed on", v)
			}
			want := "POST "
			if mesh {
				want = "POST 7"
			}
			if got := <-attempts; got != want {
				t.Errorf("the upstream saw %q (method and %s), want %q", got, AttemptHeader, want)
			}
		})
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, h := range f.RegularFields() {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}
