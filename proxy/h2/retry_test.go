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
