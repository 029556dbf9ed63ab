package http1

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// nextRetrier is a Retrier that sends a failed attempt to the next address in turn, up to max
// attempts, for the statuses in on (and every other reason), recording what it was asked.
type nextRetrier struct {
	addrs []netip.AddrPort
	max   int
	on    map[int]bool
	route *retryRouter

	mu    sync.Mutex
	asked []Attempt
}

func (r *nextRetrier) Retry(a *Attempt) (Route, time.Duration, bool) {
	r.mu.Lock()
	r.asked = append(r.asked, *a)
	r.mu.Unlock()
	if a.Attempts >= r.max || a.Reason == RetryStatus && !r.on[a.Status] {
		return Route{}, 0, false
	}
	next := r.addrs[a.Attempts%len(r.addrs)]
	return r.route.routeTo(next), time.Millisecond, true
}

func (r *nextRetrier) reasons() []RetryReason {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []RetryReason
	for _, a := range r.asked {
		out = append(out, a.Reason)
	}
	return out
}

// retryRouter sends every request first to addrs[0], with its Retrier and timeout.
type retryRouter struct {
	retrier *nextRetrier
	timeout time.Duration
	mesh    bool

	mu      sync.Mutex
	results []Result
}

func newRetryRouter(max int, addrs ...netip.AddrPort) *retryRouter {
	rr := &retryRouter{}
	rr.retrier = &nextRetrier{addrs: addrs, max: max, on: map[int]bool{502: true, 503: true, 504: true}, route: rr}
	return rr
}

func (rr *retryRouter) routeTo(a netip.AddrPort) Route {
	return Route{Addr: a, Retry: rr.retrier, Timeout: rr.timeout, MeshClient: rr.mesh, Done: func(res Result) {
		rr.mu.Lock()
		rr.results = append(rr.results, res)
		rr.mu.Unlock()
	}}
}

func (rr *retryRouter) Route(_ netip.AddrPort, _ *http.Request) (Route, error) {
	return rr.routeTo(rr.retrier.addrs[0]), nil
}

func (rr *retryRouter) waitResults(t *testing.T, n int) []Result {
	t.Helper()
	for i := 0; i < 500; i++ {
		rr.mu.Lock()
		res := append([]Result(nil), rr.results...)
		rr.mu.Unlock()
		if len(res) >= n {
			return res
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("fewer than %d Results", n)
	return nil
}

// deadAddr is a loopback address nothing listens on: a dial to it is refused.
func deadAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

// echo answers 200 with the request body, and its Detour-Attempt header in a response header.
func echo(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Seen-Attempt", r.Header.Get(AttemptHeader))
	b, _ := io.ReadAll(r.Body) // net/http's server is not full duplex
	w.Write(b)
}

func TestRetryDialFailureGoesElsewhereWithItsBody(t *testing.T) {
	good := startUpstream(t, echo)
	rr := newRetryRouter(3, deadAddr(t), good.addr)
	p := startProxy(t, Config{Router: rr})
	body := strings.Repeat("x", 3000)
	resp, err := p.client(t).Post("http://svc.example/", "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != body {
		t.Fatalf("got %d with %d bytes, want 200 echoing %d", resp.StatusCode, len(got), len(body))
	}
	if a := resp.Header.Get("Seen-Attempt"); a != "2" {
		t.Errorf("the retry carried %s %q, want 2", AttemptHeader, a)
	}
	if r := rr.retrier.reasons(); len(r) != 1 || r[0] != RetryDialFailed {
		t.Errorf("Retrier asked for %v, want one RetryDialFailed", r)
	}
	res := rr.waitResults(t, 2)
	if !res[0].Retried || res[1].Retried || res[1].Status != 200 {
		t.Errorf("results %+v: want the failed attempt Retried, then a 200", res)
	}
}

func TestRetryStatusReplaysTheKeptBody(t *testing.T) {
	bad := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(503)
	})
	good := startUpstream(t, echo)
	rr := newRetryRouter(3, bad.addr, good.addr)
	p := startProxy(t, Config{Router: rr})
	cl := p.client(t)
	// A body the client streams (not in the proxy's read buffer with the head) and a small one.
	for _, size := range []int{10, 40 << 10} {
		body := bytes.Repeat([]byte("y"), size)
		req, _ := http.NewRequest("POST", "http://svc.example/", io.MultiReader(bytes.NewReader(body[:size/2]), bytes.NewReader(body[size/2:])))
		req.ContentLength = int64(size)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Fatalf("%d-byte body: got %d with %d bytes, want 200 echoing it", size, resp.StatusCode, len(got))
		}
	}
	if bad.hits.Load() != 2 || good.hits.Load() != 2 {
		t.Errorf("hits: failing %d, good %d; want 2 and 2", bad.hits.Load(), good.hits.Load())
	}
}

func TestStatusNotRetriedWhenNotAsked(t *testing.T) {
	bad := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	good := startUpstream(t, echo)
	rr := newRetryRouter(3, bad.addr, good.addr)
	p := startProxy(t, Config{Router: rr})
	resp, err := p.client(t).Get("http://svc.example/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 500 || good.hits.Load() != 0 {
		t.Fatalf("got %d, %d hits elsewhere; want the 500 as it was", resp.StatusCode, good.hits.Load())
	}
}

func TestBodyOverReplayLimitIsNotRetried(t *testing.T) {
	bad := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(503)
	})
	good := startUpstream(t, echo)
	rr := newRetryRouter(3, bad.addr, good.addr)
	p := startProxy(t, Config{Router: rr, MaxReplayBytes: 1024})
	cl := p.client(t)
	for _, chunked := range []bool{false, true} {
		var r io.Reader = strings.NewReader(strings.Repeat("z", 4096))
		if chunked {
			r = io.MultiReader(strings.NewReader("small"), strings.NewReader("")) // unknown length: chunked
		}
		resp, err := cl.Post("http://svc.example/", "text/plain", r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Errorf("chunked %v: got %d, want the 503 (the body is not kept)", chunked, resp.StatusCode)
		}
	}
	if good.hits.Load() != 0 || len(rr.retrier.reasons()) != 0 {
		t.Errorf("%d requests went elsewhere, Retrier asked %v: want none", good.hits.Load(), rr.retrier.reasons())
	}
}

// resetAfterRead is an upstream that reads the request, then resets its connection.
func resetAfterRead(t *testing.T) *upstream {
	return startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
}

func TestResetAfterSentAsksAsReset(t *testing.T) {
	good := startUpstream(t, echo)
	rr := newRetryRouter(3, resetAfterRead(t).addr, good.addr)
	p := startProxy(t, Config{Router: rr})
	resp, err := p.client(t).Post("http://svc.example/", "text/plain", strings.NewReader("order"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != "order" {
		t.Fatalf("got %d %q", resp.StatusCode, got)
	}
	rr.retrier.mu.Lock()
	asked := rr.retrier.asked
	rr.retrier.mu.Unlock()
	if len(asked) != 1 || asked[0].Reason != RetryReset || asked[0].Method != "POST" {
		t.Fatalf("Retrier asked %+v, want one RetryReset for the POST (the policy decides)", asked)
	}
}

func TestRequestTimeout504CancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	slow := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(2 * time.Second):
			w.Write([]byte("late"))
		}
	})
	rr := newRetryRouter(3, slow.addr)
	rr.timeout = 200 * time.Millisecond
	p := startProxy(t, Config{Router: rr})
	start := time.Now()
	resp, err := p.client(t).Get("http://svc.example/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != 504 {
		t.Fatalf("got %d, want 504", resp.StatusCode)
	}
	if took < 200*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("504 after %v, want about 200ms", took)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream did not see its request cancelled")
	}
	if res := rr.waitResults(t, 1); !res[0].TimedOut || res[0].Status != 504 {
		t.Errorf("result %+v, want TimedOut and 504", res[0])
	}
}

// An inbound engine (MeshClient) whose application is down answers 503 marked refused; the
// outbound engine sends the request to another replica as never having reached it.
func TestMeshRefusalIsRetriedAsUnreached(t *testing.T) {
	dead := deadAddr(t)
	in := startProxy(t, Config{Router: RouterFunc(func(netip.AddrPort, *http.Request) (Route, error) {
		return Route{Addr: dead, MeshClient: true}, nil
	})})
	inAddr := netip.MustParseAddrPort(in.addr)

	// Directly: the mark.
	resp, err := in.client(t).Post("http://svc.example/", "text/plain", strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get(ProxyErrorHeader) != "refused" {
		t.Fatalf("inbound answered %d %s=%q, want 503 refused", resp.StatusCode, ProxyErrorHeader, resp.Header.Get(ProxyErrorHeader))
	}

	good := startUpstream(t, echo)
	rr := newRetryRouter(2, inAddr, good.addr)
	rr.retrier.on = map[int]bool{} // no status retries: only the refusal's proof counts
	p := startProxy(t, Config{Router: rr})
	resp, err = p.client(t).Post("http://svc.example/", "text/plain", strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != "body" {
		t.Fatalf("got %d %q, want 200 from the other replica", resp.StatusCode, got)
	}
	if r := rr.retrier.reasons(); len(r) != 1 || r[0] != RetryRefused {
		t.Errorf("Retrier asked %v, want RetryRefused", r)
	}
}

func TestRequestOfAClientThatWentAwayIsNotRetried(t *testing.T) {
	arrived := make(chan struct{}, 1)
	bad := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done() // the proxy closes the connection once the client is gone
		w.WriteHeader(503)
	})
	good := startUpstream(t, echo)
	rr := newRetryRouter(3, bad.addr, good.addr)
	p := startProxy(t, Config{Router: rr})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-arrived; cancel() }()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc.example/", nil)
	if resp, err := p.client(t).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("got %d, want the client's cancellation", resp.StatusCode)
	}
	res := rr.waitResults(t, 1)
	if res[0].Retried || res[0].Err == nil || good.hits.Load() != 0 || len(rr.retrier.reasons()) != 0 {
		t.Fatalf("result %+v, %d hits elsewhere, Retrier asked %v: want a failure and no retry", res[0], good.hits.Load(), rr.retrier.reasons())
	}
}

// TestInternalHeadersStopAtTheEngine: a client's own Detour-Attempt does not reach the upstream
// from an application (it does from a peer proxy, a MeshClient), and a Detour-Proxy-Error mark in
// a forwarded response never reaches the client, the other headers passing as they are.
func TestInternalHeadersStopAtTheEngine(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(ProxyErrorHeader, "reset")
		w.Header().Set("X-App", "kept")
		echo(w, r)
	})
	for _, mesh := range []bool{false, true} {
		rr := newRetryRouter(1, up.addr)
		rr.mesh = mesh
		p := startProxy(t, Config{Router: rr})
		req, _ := http.NewRequest("GET", "http://svc.example/", nil)
		req.Header.Set(AttemptHeader, "7")
		resp, err := p.client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		want := ""
		if mesh {
			want = "7"
		}
		if got := resp.Header.Get("Seen-Attempt"); got != want {
			t.Errorf("MeshClient=%v: the upstream saw %s %q, want %q", mesh, AttemptHeader, got, want)
		}
		if v := resp.Header.Get(ProxyErrorHeader); v != "" || resp.Header.Get("X-App") != "kept" {
			t.Errorf("MeshClient=%v: the client got %s %q and X-App %q, want no mark and the app's header", mesh, ProxyErrorHeader, v, resp.Header.Get("X-App"))
		}
	}
}
