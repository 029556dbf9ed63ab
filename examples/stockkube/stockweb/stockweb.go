// Package stockweb is the web front end of the StockKube example. It exists to make visible
// the problem Detour solves: Kubernetes balances connections, not requests, so a gRPC client
// that holds one connection talks to one replica forever. Each page load makes many concurrent
// calls to StockData over ONE shared connection and shows which replica answered each call;
// without a mesh the page shows a single server, with Detour the calls spread over all of them.
//
// StockWeb knows nothing about Detour: it is the plain app a user would deploy.
package stockweb

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/examples/stockkube/stockdata"
	"github.com/detourmesh/detour/examples/stockkube/stockpb"
)

// Config configures a Server.
type Config struct {
	// StockData is the host:port of the StockData service (a VIP in the demo). It is dialled
	// with grpc's passthrough resolver, so the app opens exactly one connection to it and never
	// balances on its own, like most gRPC clients in a cluster.
	StockData string
	// Calls is the number of concurrent calls per page load; 0 means 100.
	Calls int
	// Dial, if set, opens the connection to StockData, e.g. inside a network namespace in
	// tests and the demo. The default is plain TCP.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Timeout bounds one page load; 0 means 10 s.
	Timeout time.Duration
	// Logger receives request errors; nil means slog.Default().
	Logger *slog.Logger
}

// Server serves the StockWeb page. Its one gRPC connection is shared by every page load.
type Server struct {
	cfg    Config
	conn   *grpc.ClientConn
	client stockpb.StockDataClient
	log    *slog.Logger
}

// Quote is one answer of StockData.
type Quote struct {
	Symbol string  `json:"symbol"`
	Price  float64 `json:"price"`
	Server string  `json:"server"`
}

// Result is what one page load saw.
type Result struct {
	// Quotes holds the successful answers in call order.
	Quotes []Quote `json:"quotes"`
	// Counts is the number of answers per replica.
	Counts map[string]int `json:"counts"`
	// Calls is the number of calls made, Errors how many of them failed.
	Calls  int `json:"calls"`
	Errors int `json:"errors"`
	// FirstError is the first failed call's error in call order, empty if none failed.
	FirstError string `json:"firstError,omitempty"`
	// Elapsed is the wall time of all the calls, in JSON as seconds.
	Elapsed time.Duration `json:"-"`
}

// MarshalJSON adds elapsedSeconds, since a Duration would marshal as opaque nanoseconds.
func (r Result) MarshalJSON() ([]byte, error) {
	type plain Result
	return json.Marshal(struct {
		plain
		ElapsedSeconds float64 `json:"elapsedSeconds"`
	}{plain(r), r.Elapsed.Seconds()})
}

// ServerCount is one row of the per-replica summary.
type ServerCount struct {
	Server string
	Calls  int
}

// Servers returns Counts sorted by server name, for stable display.
func (r Result) Servers() []ServerCount {
	out := make([]ServerCount, 0, len(r.Counts))
	for s, n := range r.Counts {
		out = append(out, ServerCount{s, n})
	}
	slices.SortFunc(out, func(a, b ServerCount) int { return cmp.Compare(a.Server, b.Server) })
	return out
}

// New checks cfg and opens the gRPC connection. The connection is lazy: New succeeds even if
// StockData is not up yet, and a failure shows on the page.
func New(cfg Config) (*Server, error) {
	if _, _, err := net.SplitHostPort(cfg.StockData); err != nil {
		return nil, fmt.Errorf("StockData address %q must be host:port: %w", cfg.StockData, err)
	}
	if cfg.Calls < 0 || cfg.Timeout < 0 {
		return nil, fmt.Errorf("calls (%d) and timeout (%s) must not be negative", cfg.Calls, cfg.Timeout)
	}
	if cfg.Calls == 0 {
		cfg.Calls = 100
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Calls fail fast while StockData is unreachable, so the page shows the error at once;
		// a short reconnect backoff (gRPC's default grows to 2 min) makes the page recover
		// within a second of StockData coming up, e.g. when the demo starts both together.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if cfg.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(cfg.Dial))
	}
	// passthrough: no DNS resolution and no client-side balancing, one subchannel, one
	// connection, exactly what a typical gRPC client does with a Service VIP.
	conn, err := grpc.NewClient("passthrough:///"+cfg.StockData, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to StockData at %s: %w", cfg.StockData, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Server{cfg: cfg, conn: conn, client: stockpb.NewStockDataClient(conn), log: log}, nil
}

// Close closes the gRPC connection.
func (s *Server) Close() error { return s.conn.Close() }

// Quotes makes cfg.Calls concurrent GetQuote calls over the shared connection, cycling through
// the known symbols. Failed calls are counted in the Result; the error is non-nil when any
// call failed, and says how many.
func (s *Server) Quotes(ctx context.Context) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	n := s.cfg.Calls
	quotes := make([]*stockpb.Quote, n)
	errs := make([]error, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sym := stockdata.Symbols[i%len(stockdata.Symbols)]
			quotes[i], errs[i] = s.client.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: sym})
		})
	}
	wg.Wait()
	res := Result{Counts: map[string]int{}, Calls: n, Elapsed: time.Since(start)}
	var first error
	for i, q := range quotes {
		if errs[i] != nil {
			res.Errors++
			if first == nil {
				first = errs[i]
			}
			continue
		}
		res.Quotes = append(res.Quotes, Quote{Symbol: q.Symbol, Price: q.Price, Server: q.Server})
		res.Counts[q.Server]++
	}
	if first == nil {
		return res, nil
	}
	// A gRPC status prints as "rpc error: code = ... desc = ..."; the code and message suffice.
	if st, ok := status.FromError(first); ok {
		first = fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	res.FirstError = first.Error()
	return res, fmt.Errorf("%d of %d calls failed: %w", res.Errors, n, first)
}

// Handler serves GET / (the HTML page), GET /api/quotes (the same Result as JSON) and
// GET /healthz (liveness of the process only, so a StockData outage shows on the page rather
// than restarting StockWeb).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.page)
	mux.HandleFunc("GET /api/quotes", s.api)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// statusOf is 502 when no call succeeded, since then the page has nothing from StockData.
func statusOf(res Result) int {
	if res.Errors > 0 && res.Errors == res.Calls {
		return http.StatusBadGateway
	}
	return http.StatusOK
}

func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	res, err := s.Quotes(r.Context())
	if err != nil {
		s.log.Warn("stockweb: quotes", "stockdata", s.cfg.StockData, "err", err)
	}
	if res.Quotes == nil {
		res.Quotes = []Quote{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(statusOf(res))
	if err := json.NewEncoder(w).Encode(res); err != nil && !errors.Is(err, r.Context().Err()) {
		s.log.Warn("stockweb: writing JSON", "err", err)
	}
}

//go:embed page.html
var pageFS embed.FS

var pageTmpl = template.Must(template.ParseFS(pageFS, "page.html"))

type pageData struct {
	Result
	StockData string
	Error     string
	ElapsedMS float64
	Summary   []summaryRow
	Rows      []quoteRow
}

// tones is the number of server colours in page.html; servers past it reuse them.
const tones = 6

type summaryRow struct {
	ServerCount
	Tone int
}

type quoteRow struct {
	Quote
	Tone int
}

func newPageData(res Result, stockData string, err error) pageData {
	d := pageData{Result: res, StockData: stockData, ElapsedMS: float64(res.Elapsed.Microseconds()) / 1000}
	if err != nil {
		d.Error = err.Error()
	}
	// One colour per server, in summary order, so a glance at the quote table shows whether
	// the calls spread.
	tone := map[string]int{}
	for i, sc := range res.Servers() {
		tone[sc.Server] = i % tones
		d.Summary = append(d.Summary, summaryRow{sc, i % tones})
	}
	for _, q := range res.Quotes {
		d.Rows = append(d.Rows, quoteRow{q, tone[q.Server]})
	}
	return d
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	res, err := s.Quotes(r.Context())
	data := newPageData(res, s.cfg.StockData, err)
	if err != nil {
		s.log.Warn("stockweb: quotes", "stockdata", s.cfg.StockData, "err", err)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(statusOf(res))
	if err := pageTmpl.Execute(w, data); err != nil {
		s.log.Warn("stockweb: rendering page", "err", err)
	}
}
