package h2

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// failover is a Router and Retrier: every stream starts at addrs[0]; a failed attempt goes to
// the next address while allow says so. It records every attempt's Result and every Attempt.
type failover struct {
	addrs   []netip.AddrPort
	allow   func(*Attempt) bool
	timeout time.Duration
	mu      sync.Mutex
	tries   []Attempt
	results []Result
}

func (f *failover) route(i int) Route {
	return Route{Addr: f.addrs[i], Retry: f, Timeout: f.timeout, Done: func(r Result) {
		f.mu.Lock()
		f.results = append(f.results, r)
		f.mu.Unlock()
	}}
}

func (f *failover) Route(netip.AddrPort, *Head) (Route, error) { return f.route(0), nil }

func (f *failover) Retry(a *Attempt) (Route, time.Duration, bool) {
	f.mu.Lock()
	f.tries = append(f.tries, Attempt{Addr: a.Addr, Reason: a.Reason, Status: a.Status, GRPCStatus: a.GRPCStatus, Err: a.Err, Attempts: a.Attempts})
	allow := f.allow
	f.mu.Unlock()
	if a.Attempts >= len(f.addrs) || allow != nil && !allow(a) {
		return Route{}, 0, false
	}
	return f.route(a.Attempts), time.Millisecond, true
}

func (f *failover) attempts() []Attempt {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Attempt(nil), f.tries...)
}

func (f *failover) waitResults(t *testing.T, n int) []Result {
	t.Helper()
	waitFor(t, "results", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.results) >= n })
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Result(nil), f.results...)
}

// failing is a gRPC server that answers every call UNAVAILABLE and counts them.
func failing(t *testing.T, calls *atomic.Int64) *testServer {
	return startGRPCServer(t, "failing", grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, _ grpc.UnaryHandler) (any, error) {
		calls.Add(1)
		return nil, status.Error(codes.Unavailable, "replica failing")
	}), grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, _ grpc.StreamHandler) error {
		calls.Add(1)
		var m []byte
		ss.RecvMsg(&m) // the first message arrived: the application saw the call
		return status.Error(codes.Unavailable, "replica failing")
	}))
}

// attemptHeader is a gRPC server recording the detour-attempt header of each call.
func attemptHeader(t *testing.T, seen *sync.Map) *testServer {
	return startGRPCServer(t, "good", grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		seen.Store(strings.Join(md.Get("detour-attempt"), ","), true)
		return h(ctx, req)
	}))
}

func TestDialFailureGoesToAnotherEndpoint(t *testing.T) {
	good := startGRPCServer(t, "good")
	dead := netip.MustParseAddrPort("127.0.0.1:1")
	f := &failover{addrs: []netip.AddrPort{dead, good.addr}}
	var down atomic.Value
	addr, _, _ := startProxy(t, Config{Router: f, OnUpstreamFailure: func(a netip.AddrPort, err error) { down.Store(a) }})
	in, out := []byte("x"), []byte(nil)
	if err := dialGRPC(t, addr).Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatalf("a call whose first endpoint refused the connection failed: %v", err)
	}
	if a := f.attempts(); len(a) != 1 || a[0].Reason != RetryDialFailed || a[0].Addr != dead {
		t.Fatalf("attempts %+v, want one dial failure at %v", a, dead)
	}
	res := f.waitResults(t, 2)
	if !res[0].Retried || res[0].Addr != dead || res[1].Retried || res[1].Err != nil || res[1].Retries != 1 {
		t.Fatalf("results %+v: want the failed attempt reported as retried, then the answer", res)
	}
	if down.Load() != dead {
		t.Fatalf("OnUpstreamFailure was told %v, want %v", down.Load(), dead)
	}
}

func TestHeldBackUnavailableIsRetriedWithAttemptHeader(t *testing.T) {
	var failed atomic.Int64
	var seen sync.Map
	bad, good := failing(t, &failed), attemptHeader(t, &seen)
	f := &failover{addrs: []netip.AddrPort{bad.addr, good.addr}}
	addr, _, _ := startProxy(t, Config{Router: f})
	in, out := []byte("x"), []byte(nil)
	if err := dialGRPC(t, addr).Invoke(ctxT(t), mUnary, &in, &out); err != nil || string(out) != "x" {
		t.Fatalf("the client saw the failure of a retried attempt: %v", err)
	}
	if a := f.attempts(); len(a) != 1 || a[0].Reason != RetryStatus || a[0].GRPCStatus != 14 || failed.Load() != 1 {
		t.Fatalf("attempts %+v (the failing replica saw %d calls)", a, failed.Load())
	}
	if _, ok := seen.Load("2"); !ok {
		var got []any
		seen.Range(func(k, _ any) bool { got = append(got, k); return true })
		t.Fatalf("the retry did not carry detour-attempt: 2 (saw %v)", got)
	}
	// Refused by the Retrier: the client gets the upstream's own answer.
	f.mu.Lock()
	f.allow = func(*Attempt) bool { return false }
	f.mu.Unlock()
	err := dialGRPC(t, addr).Invoke(ctxT(t), mUnary, &in, &out)
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "replica failing" {
		t.Fatalf("a failure not retried: %v, want the replica's UNAVAILABLE", err)
	}
}

func TestStreamingCallIsNotRetriedAfterItsFirstMessage(t *testing.T) {
	var failed atomic.Int64
	var seen sync.Map
	bad, good := failing(t, &failed), attemptHeader(t, &seen)
	f := &failover{addrs: []netip.AddrPort{bad.addr, good.addr}}
	addr, _, _ := startProxy(t, Config{Router: f})
	st, err := dialGRPC(t, addr).NewStream(ctxT(t), descClient, mClientStream)
	if err != nil {
		t.Fatal(err)
	}
	m := []byte("first")
	if err := st.SendMsg(&m); err != nil {
		t.Fatal(err)
	}
	var out []byte
	err = st.RecvMsg(&out)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a client stream failing after its first message: %v, want the replica's UNAVAILABLE", err)
	}
	if a := f.attempts(); len(a) != 0 {
		t.Fatalf("the Retrier was asked %+v: a stream still sending must not be resent", a)
	}
}

func TestRouteTimeoutCancelsUpstream(t *testing.T) {
	ts := startGRPCServer(t, "slow")
	f := &failover{addrs: []netip.AddrPort{ts.addr}, timeout: 200 * time.Millisecond}
	addr, _, _ := startProxy(t, Config{Router: f})
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-sleep", "2s")
	in, out := []byte("x"), []byte(nil)
	start := time.Now()
	err := dialGRPC(t, addr).Invoke(ctx, mUnary, &in, &out)
	took := time.Since(start)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call past its route's timeout: %v, want DeadlineExceeded", err)
	}
	if took > 1500*time.Millisecond {
		t.Fatalf("the timeout of 200ms answered after %v", took)
	}
	waitFor(t, "the server's handler to see the cancellation", func() bool { return ts.inFlight.Load() == 0 })
	if res := f.waitResults(t, 1); !res[0].TimedOut {
		t.Fatalf("Result %+v, want TimedOut", res[0])
	}
}

func TestGRPCTimeoutShorterThanTheRoute(t *testing.T) {
	ts := startGRPCServer(t, "slow")
	f := &failover{addrs: []netip.AddrPort{ts.addr}, timeout: time.Hour}
	addr, _, _ := startProxy(t, Config{Router: f})
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctxT(t), "x-sleep", "2s"), 300*time.Millisecond)
	defer cancel()
	in, out := []byte("x"), []byte(nil)
	if err := dialGRPC(t, addr).Invoke(ctx, mUnary, &in, &out); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v", err)
	}
	waitFor(t, "the server's handler to see the cancellation", func() bool { return ts.inFlight.Load() == 0 })
}

func TestParseGRPCTimeout(t *testing.T) {
	for v, want := range map[string]time.Duration{"1S": time.Second, "200m": 200 * time.Millisecond, "5u": 5 * time.Microsecond,
		"3H": 3 * time.Hour, "2M": 2 * time.Minute, "7n": 7} {
		if d, ok := parseGRPCTimeout(v); !ok || d != want {
			t.Errorf("%q: %v %v, want %v", v, d, ok, want)
		}
	}
	for _, v := range []string{"", "S", "1", "1x", "-1S", "123456789S"} {
		if _, ok := parseGRPCTimeout(v); ok {
			t.Errorf("%q accepted", v)
		}
	}
}

// TestKeepaliveFindsASilentPeer: a peer that takes a request and then answers nothing, PINGs
// included (a black hole), has its connection closed by keepalive within interval + timeout,
// OnUpstreamFailure is told, and the stream (a whole, idempotent request) goes to another
// endpoint.
func TestKeepaliveFindsASilentPeer(t *testing.T) {
	silent := startRawUpstream(t, func(*rawServerConn, int64, *http2.MetaHeadersFrame) {})
	good := startGRPCServer(t, "good")
	f := &failover{addrs: []netip.AddrPort{silent.addr, good.addr}}
	failed := make(chan error, 4)
	addr, _, _ := startProxy(t, Config{Router: f, Logger: discardLogger(),
		PeerKeepalive:         func(a netip.AddrPort) bool { return a == silent.addr },
		PeerKeepaliveInterval: 100 * time.Millisecond, PeerKeepaliveTimeout: 200 * time.Millisecond,
		OnUpstreamFailure: func(_ netip.AddrPort, err error) { failed <- err }})
	in, out := []byte("x"), []byte(nil)
	start := time.Now()
	if err := dialGRPC(t, addr).Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatalf("a call whose first endpoint went silent: %v", err)
	}
	took := time.Since(start)
	select {
	case err := <-failed:
		if !errors.Is(err, ErrKeepalive) {
			t.Fatalf("OnUpstreamFailure: %v, want ErrKeepalive", err)
		}
	default:
		t.Fatal("OnUpstreamFailure was not told of the silent peer")
	}
	if a := f.attempts(); len(a) != 1 || a[0].Reason != RetryReset || !errors.Is(a[0].Err, ErrKeepalive) {
		t.Fatalf("attempts %+v, want one reset by keepalive", a)
	}
	t.Logf("answered after %v (keepalive 100 ms + 200 ms)", took)
}

// TestRequestLargerThanTheReplayBufferIsNotRetried: a request body beyond MaxReplayBytes is not
// kept, so once it went upstream the request is never sent twice.
func TestRequestLargerThanTheReplayBufferIsNotRetried(t *testing.T) {
	var failed atomic.Int64
	var seen sync.Map
	bad, good := failing(t, &failed), attemptHeader(t, &seen)
	f := &failover{addrs: []netip.AddrPort{bad.addr, good.addr}}
	addr, _, _ := startProxy(t, Config{Router: f, MaxReplayBytes: 1024})
	cc := dialGRPC(t, addr)
	small, large, out := make([]byte, 512), make([]byte, 4096), []byte(nil)
	if err := cc.Invoke(ctxT(t), mUnary, &small, &out); err != nil {
		t.Fatalf("a request within the replay buffer was not retried: %v", err)
	}
	err := cc.Invoke(ctxT(t), mUnary, &large, &out)
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "replica failing" {
		t.Fatalf("a request larger than the replay buffer: %v, want the replica's own UNAVAILABLE", err)
	}
	if a := f.attempts(); len(a) != 1 {
		t.Fatalf("the Retrier was asked %d times, want once (for the small request)", len(a))
	}
}

// TestGRPCTimeoutEndsTheStream: a request's own grpc-timeout is enforced with no route timeout:
// the client is answered DEADLINE_EXCEEDED once it passes, the upstream sees RST_STREAM CANCEL,
// and the attempt is reported timed out.
func TestGRPCTimeoutEndsTheStream(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {}) // never answers
	rsts := upstreamRST(ru)
	rec := newRecorder(ru.addr)
	addr, _, _ := startProxy(t, Config{Router: rec, Logger: discardLogger()})
	c := dialConf(t, addr)
	start := time.Now()
	c.headers(1, true, grpcReq(mUnary, "grpc-timeout", "200m")...)
	h := c.response(1)
	took := time.Since(start)
	if got := fieldValue(h, "grpc-status"); got != "4" || !h.StreamEnded() {
		t.Fatalf("grpc-status %q (end %v), want 4 (DEADLINE_EXCEEDED) in a trailers-only response", got, h.StreamEnded())
	}
	if took < 200*time.Millisecond {
		t.Fatalf("a grpc-timeout of 200m expired after %v", took)
	}
	t.Logf("grpc-timeout 200m answered DEADLINE_EXCEEDED after %v", took)
	wantUpstreamRST(t, rsts, http2.ErrCodeCancel)
	if res := rec.waitResult(t); !res.TimedOut {
		t.Fatalf("Result %+v, want TimedOut", res)
	}
}

// TestDeadlineOfAStreamUnderWayCancelsIt: a response already flowing, held back by a client
// that grants no window, is cut at its deadline with RST_STREAM CANCEL (which a gRPC client
// reads, past its own deadline, as DEADLINE_EXCEEDED), not INTERNAL_ERROR.
func TestDeadlineOfAStreamUnderWayCancelsIt(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		sc.headers(f.StreamID, false, ":status", "200", "content-type", "application/grpc")
		for range 3 {
			sc.data(f.StreamID, false, make([]byte, 16<<10))
		}
	})
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), Logger: discardLogger()})
	c := dialConf(t, addr)
	c.write(func(fr *http2.Framer) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1024})
	})
	c.headers(1, true, grpcReq(mServerStream, "grpc-timeout", "200m")...)
	c.wantStreamError(1, http2.ErrCodeCancel)
}

// TestGRPCTimeoutsOnOneConnection: deadlines of streams sharing a client connection expire in
// their own order, whatever order they arrived in, and a stream that ends in time leaves the
// others' deadlines intact.
func TestGRPCTimeoutsOnOneConnection(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		if fieldValue(f, "x-answer") != "" {
			sc.respondGRPC(f.StreamID, []byte("ok"))
		}
	})
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), Logger: discardLogger()})
	c := dialConf(t, addr)
	c.headers(1, true, grpcReq(mUnary, "grpc-timeout", "600m")...)
	c.headers(3, true, grpcReq(mUnary, "grpc-timeout", "300m", "x-answer", "1")...)
	c.headers(5, true, grpcReq(mUnary, "grpc-timeout", "200m")...)
	var order []uint32
	deadline := time.Now().Add(confWait)
	for len(order) < 3 {
		f, err := c.read(deadline)
		if err != nil {
			t.Fatalf("after %v: %v", order, err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamEnded() {
			want := "4"
			if h.StreamID == 3 {
				want = "0"
			}
			if got := fieldValue(h, "grpc-status"); got != want {
				t.Fatalf("stream %d: grpc-status %q, want %s", h.StreamID, got, want)
			}
			order = append(order, h.StreamID)
		}
	}
	if order[0] != 3 || order[1] != 5 || order[2] != 1 {
		t.Fatalf("streams ended in order %v, want [3 5 1]", order)
	}
}

// TestRetryCarriesTheTimeLeft: a retried gRPC request's grpc-timeout is what its deadline leaves.
func TestRetryCarriesTheTimeLeft(t *testing.T) {
	bad := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		time.Sleep(50 * time.Millisecond) // the upstream takes time to fail: that time is spent
		sc.headers(f.StreamID, true, ":status", "200", "content-type", "application/grpc", "grpc-status", "14")
	})
	got := make(chan string, 1)
	good := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		got <- fieldValue(f, "grpc-timeout")
		sc.respondGRPC(f.StreamID, []byte("ok"))
	})
	f := &failover{addrs: []netip.AddrPort{bad.addr, good.addr}}
	addr, _, _ := startProxy(t, Config{Router: f, Logger: discardLogger()})
	c := dialConf(t, addr)
	c.headers(1, true, grpcReq(mUnary, "grpc-timeout", "10S")...)
	if s := fieldValue(c.wantStatus(1, "200"), "grpc-status"); s != "" && s != "0" {
		t.Fatalf("grpc-status %q after the retry", s)
	}
	v := <-got
	d, ok := parseGRPCTimeout(v)
	if !ok || d >= 10*time.Second-50*time.Millisecond || d < time.Second {
		t.Fatalf("retry carried grpc-timeout %q, want the 10S less the time the first attempt took", v)
	}
}

func TestFormatGRPCTimeout(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Nanosecond: "1n", 99999999: "99999999n", 100000000: "100000u",
		1500 * time.Microsecond: "1500000n", 10 * time.Second: "10000000u", 2 * time.Hour: "7200000m", 100000001: "100001u"} {
		if got := formatGRPCTimeout(d); got != want {
			t.Errorf("%v: %q, want %q", int64(d), got, want)
		}
		if p, ok := parseGRPCTimeout(formatGRPCTimeout(d)); !ok || p < d {
			t.Errorf("%v: %q parses to %v", int64(d), formatGRPCTimeout(d), p)
		}
	}
}
