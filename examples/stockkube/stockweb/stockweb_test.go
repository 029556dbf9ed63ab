package stockweb

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/examples/stockkube/stockdata"
	"github.com/detourmesh/detour/examples/stockkube/stockpb"
)

// serveGRPC serves impl on a random loopback port until the test ends.
func serveGRPC(t *testing.T, impl stockpb.StockDataServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	stockpb.RegisterStockDataServer(g, impl)
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(ln) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return ln.Addr().String()
}

// connForwarder is kube-proxy in miniature: each new TCP connection goes to the next backend
// and stays there, so balancing is per connection, never per request.
type connForwarder struct {
	ln       net.Listener
	backends []string
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
	wg       sync.WaitGroup
}

func startForwarder(t *testing.T, backends ...string) *connForwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &connForwarder{ln: ln, backends: backends}
	f.wg.Go(f.acceptLoop)
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *connForwarder) addr() string { return f.ln.Addr().String() }

// track registers c for closing at cleanup.
func (f *connForwarder) track(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns = append(f.conns, c)
}

func (f *connForwarder) acceptLoop() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return // listener closed at cleanup
		}
		n := f.accepted.Add(1) - 1
		f.track(c)
		up, err := net.Dial("tcp", f.backends[int(n)%len(f.backends)])
		if err != nil {
			c.Close()
			continue
		}
		f.track(up)
		f.wg.Go(func() { io.Copy(up, c); up.Close() })
		f.wg.Go(func() { io.Copy(c, up); c.Close() })
	}
}

// startReplicas starts n StockData replicas named replica-0 … replica-(n-1).
func startReplicas(t *testing.T, n int) []string {
	var addrs []string
	for i := range n {
		addrs = append(addrs, serveGRPC(t, &stockdata.Server{ID: fmt.Sprintf("replica-%d", i)}))
	}
	return addrs
}

func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// getJSON fetches /api/quotes, checking the JSON has the fields other tools rely on.
func getJSON(t *testing.T, url string) Result {
	t.Helper()
	resp, err := http.Get(url + "/api/quotes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /api/quotes: %s %q\n%s", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	var shape map[string]json.RawMessage
	if err := json.Unmarshal(body, &shape); err != nil {
		t.Fatalf("GET /api/quotes: %v\n%s", err, body)
	}
	for _, k := range []string{"quotes", "counts", "calls", "errors", "elapsedSeconds"} {
		if _, ok := shape[k]; !ok {
			t.Errorf("JSON has no %q field: %s", k, body)
		}
	}
	var res Result
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func checkComplete(t *testing.T, res Result, calls int) {
	t.Helper()
	sum := 0
	for _, n := range res.Counts {
		sum += n
	}
	if res.Calls != calls || res.Errors != 0 || sum != calls || len(res.Quotes) != calls {
		t.Fatalf("calls=%d errors=%d sum(counts)=%d quotes=%d, want %d calls all answered (first error %q)",
			res.Calls, res.Errors, sum, len(res.Quotes), calls, res.FirstError)
	}
	for _, q := range res.Quotes {
		if q.Symbol == "" || q.Price <= 0 || q.Server == "" {
			t.Fatalf("incomplete quote %+v", q)
		}
	}
}

func TestOneConnectionPinsEveryCallToOneReplica(t *testing.T) {
	fwd := startForwarder(t, startReplicas(t, 3)...)
	s := newServer(t, Config{StockData: fwd.addr()})
	web := httptest.NewServer(s.Handler())
	t.Cleanup(web.Close)

	for load := range 3 {
		res := getJSON(t, web.URL)
		checkComplete(t, res, 100)
		if len(res.Counts) != 1 || res.Counts["replica-0"] != 100 {
			t.Fatalf("load %d: counts %v, want all 100 calls on replica-0 (the first connection's replica)", load, res.Counts)
		}
	}
	if n := fwd.accepted.Load(); n != 1 {
		t.Fatalf("forwarder accepted %d connections after 3 page loads, want 1 shared connection", n)
	}
}

func TestFreshServerLandsOnTheNextReplica(t *testing.T) {
	fwd := startForwarder(t, startReplicas(t, 3)...)
	first := newServer(t, Config{StockData: fwd.addr()})
	res, err := first.Quotes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	checkComplete(t, res, 100)

	var dials atomic.Int64
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	second := newServer(t, Config{StockData: fwd.addr(), Dial: dial, Calls: 30})
	for range 2 {
		res, err := second.Quotes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		checkComplete(t, res, 30)
		if len(res.Counts) != 1 || res.Counts["replica-1"] != 30 {
			t.Fatalf("second server's counts %v, want all 30 on replica-1: a new connection, a new replica, still one", res.Counts)
		}
	}
	if d, a := dials.Load(), fwd.accepted.Load(); d != 1 || a != 2 {
		t.Fatalf("Dial called %d times, forwarder accepted %d, want 1 and 2", d, a)
	}
}

// balancedDouble stands in for StockData behind a per-request balancer such as Detour: every
// answer comes from the next of three replicas, over whichever connection it came in on.
type balancedDouble struct {
	stockpb.UnimplementedStockDataServer
	n atomic.Int64
}

func (b *balancedDouble) GetQuote(_ context.Context, req *stockpb.QuoteRequest) (*stockpb.Quote, error) {
	id := fmt.Sprintf("replica-%d", (b.n.Add(1)-1)%3)
	return &stockpb.Quote{Symbol: req.Symbol, Price: 100 + float64(len(req.Symbol)), Server: id}, nil
}

// failingDouble answers like StockData but fails every call for one symbol.
type failingDouble struct {
	stockdata.Server
	symbol string
}

func (f *failingDouble) GetQuote(ctx context.Context, req *stockpb.QuoteRequest) (*stockpb.Quote, error) {
	if req.Symbol == f.symbol {
		return nil, status.Errorf(codes.Unavailable, "replica draining")
	}
	return f.Server.GetQuote(ctx, req)
}

func getPage(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Fatalf("Content-Type %q", ct)
	}
	return resp.StatusCode, string(body)
}

func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestPage(t *testing.T) {
	tests := []struct {
		name       string
		stockData  func(t *testing.T) string
		wantStatus int
		want       []string
		dontWant   []string
	}{
		{
			name:       "a balanced backend shows every server and no error",
			stockData:  func(t *testing.T) string { return serveGRPC(t, &balancedDouble{}) },
			wantStatus: http.StatusOK,
			want: []string{
				"<title>StockKube</title>", "100 concurrent gRPC calls", "over one gRPC connection",
				`<td class="name"><span class="tone t0"></span>replica-0</td><td class="num">34</td>`,
				`<td class="name"><span class="tone t1"></span>replica-1</td><td class="num">33</td>`,
				`<td class="name"><span class="tone t2"></span>replica-2</td><td class="num">33</td>`,
				`<td>ACME</td>`, `<td class="server"><span class="tone t2"></span>replica-2</td>`,
			},
			dontWant: []string{`class="error"`, "http://", "https://"},
		},
		{
			name:       "a closed port shows every call failed and still renders",
			stockData:  closedPort,
			wantStatus: http.StatusBadGateway,
			want:       []string{`<div class="error" role="alert">100 of 100 calls failed: Unavailable: `, "<td colspan=\"2\">no answers</td>", "</html>"},
		},
		{
			name:       "some failed calls are counted and the rest shown",
			stockData:  func(t *testing.T) string { return serveGRPC(t, &failingDouble{stockdata.Server{ID: "pod-a"}, "ACME"}) },
			wantStatus: http.StatusOK,
			want: []string{
				`<div class="error" role="alert">10 of 100 calls failed: Unavailable: replica draining</div>`,
				`<td class="name"><span class="tone t0"></span>pod-a</td><td class="num">90</td>`,
			},
			dontWant: []string{"<td>ACME</td>"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, Config{StockData: tt.stockData(t)})
			web := httptest.NewServer(s.Handler())
			t.Cleanup(web.Close)
			code, body := getPage(t, web.URL)
			if code != tt.wantStatus {
				t.Errorf("status %d, want %d", code, tt.wantStatus)
			}
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			for _, w := range tt.dontWant {
				if strings.Contains(body, w) {
					t.Errorf("page has %q", w)
				}
			}
			if t.Failed() {
				t.Logf("page:\n%s", body)
			}
		})
	}
}

func TestHealthzAndRoutes(t *testing.T) {
	s := newServer(t, Config{StockData: closedPort(t)})
	web := httptest.NewServer(s.Handler())
	t.Cleanup(web.Close)
	for path, want := range map[string]int{"/healthz": 200, "/nope": 404} {
		resp, err := http.Get(web.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	resp, err := http.Post(web.URL+"/api/quotes", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/quotes: %d, want 405", resp.StatusCode)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{StockData: "127.0.0.1"},
		{StockData: ""},
		{StockData: "127.0.0.1:80", Calls: -1},
		{StockData: "127.0.0.1:80", Timeout: -1},
	} {
		if s, err := New(cfg); err == nil {
			s.Close()
			t.Errorf("New(%+v) succeeded, want an error", cfg)
		}
	}
}
