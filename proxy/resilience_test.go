package proxy

import (
	"errors"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/detourmesh/detour/proxy/h2"
	"github.com/detourmesh/detour/proxy/http1"
)

const withPolicy = `services:
  - name: stockdata.stocks
    addresses: ["198.19.0.10:80"]
    retry: {on: [unavailable, reset], attempts: 3, backoff: 0s}
    budget: {ratio: 0, minPerSecond: 0.2, window: 10s}
    routes:
      - {path: /stockkube.v1.StockData/GetQuote, idempotent: true}
    endpoints:
      - address: 198.18.0.11:8080
      - address: 198.18.0.12:8080
      - address: 198.18.0.13:8080
`

// TestRetrierDecides: which failed attempts the proxy sends elsewhere, by the policy: what never
// reached the application always (and ejects its endpoint), failures in the application by
// outcome, resets only when idempotent, all within attempts and the budget.
func TestRetrierDecides(t *testing.T) {
	p := New(Config{Logger: slog.New(slog.DiscardHandler)})
	p.routes.update(mustParse(t, withPolicy))
	svc := p.routes.lookup(netip.MustParseAddrPort("198.19.0.10:80"))
	first := netip.MustParseAddrPort("198.18.0.11:8080")
	getQuote := &h2.Head{Method: "POST", Path: "/stockkube.v1.StockData/GetQuote"}
	watch := &h2.Head{Method: "POST", Path: "/stockkube.v1.StockData/WatchQuotes"}
	try := func(h *h2.Head, a h2.Attempt) bool {
		a.Head, a.Addr = h, first
		if a.Attempts == 0 {
			a.Attempts = 1
		}
		if a.GRPCStatus == 0 {
			a.GRPCStatus = -1
		}
		next, _, ok := svc.route(h.Method, h.Path).Retry(&a)
		if ok && next.Addr == first {
			t.Errorf("%+v went back to the endpoint that failed", a)
		}
		if ok {
			next.Done(h2.Result{Status: 200, GRPCStatus: 0})
		}
		return ok
	}
	// The budget (0.2/s over 10 s) allows two retries in all.
	for _, tt := range []struct {
		what string
		head *h2.Head
		a    h2.Attempt
		want bool
	}{
		{"a refused stream, whatever the policy", watch, h2.Attempt{Reason: h2.RetryRefused, Err: errors.New("refused")}, true},
		{"a gRPC status the policy does not name", getQuote, h2.Attempt{Reason: h2.RetryStatus, Status: 200, GRPCStatus: 13}, false},
		{"a reset of a request not declared idempotent", watch, h2.Attempt{Reason: h2.RetryReset}, false},
		{"past the attempts", getQuote, h2.Attempt{Reason: h2.RetryStatus, Status: 200, GRPCStatus: 14, Attempts: 3}, false},
		{"UNAVAILABLE", getQuote, h2.Attempt{Reason: h2.RetryStatus, Status: 200, GRPCStatus: 14}, true},
		{"a reset of an idempotent route", getQuote, h2.Attempt{Reason: h2.RetryReset}, true},
		{"UNAVAILABLE once the budget is spent", getQuote, h2.Attempt{Reason: h2.RetryStatus, Status: 200, GRPCStatus: 14}, false},
		{"a failed dial, the budget spent", getQuote, h2.Attempt{Reason: h2.RetryDialFailed, Err: errors.New("refused")}, true},
	} {
		if got := try(tt.head, tt.a); got != tt.want {
			t.Errorf("%s: retried %v, want %v", tt.what, got, tt.want)
		}
	}
	for _, st := range svc.balancer.Stats() {
		if st.Endpoint.Addr == first && st.State != "ejected" {
			t.Errorf("the endpoint that refused is %q, want ejected", st.State)
		}
	}
}

// TestH1RetrierDecides: the HTTP/1.1 engine's failed attempts get the same decisions, by method
// for resets, and a refusal mark counts only from a meshed endpoint (a Detour proxy).
func TestH1RetrierDecides(t *testing.T) {
	p := New(Config{Logger: slog.New(slog.DiscardHandler)})
	p.routes.update(mustParse(t, withPolicy))
	svc := p.routes.lookup(netip.MustParseAddrPort("198.19.0.10:80"))
	first := netip.MustParseAddrPort("198.18.0.11:8080")
	for _, tt := range []struct {
		what string
		a    http1.Attempt
		want bool
	}{
		{"a failed dial", http1.Attempt{Method: "POST", Path: "/orders", Reason: http1.RetryDialFailed}, true},
		{"a refusal mark from an endpoint that is not meshed", http1.Attempt{Method: "POST", Path: "/orders", Reason: http1.RetryRefused, Status: 503}, false},
		{"a reset of a POST", http1.Attempt{Method: "POST", Path: "/orders", Reason: http1.RetryReset}, false},
		{"a 503 the policy does not name", http1.Attempt{Method: "GET", Path: "/", Reason: http1.RetryStatus, Status: 503}, false},
		{"a reset of a GET", http1.Attempt{Method: "GET", Path: "/", Reason: http1.RetryReset}, true},
	} {
		a := tt.a
		a.Addr, a.Attempts = first, 1
		next, _, ok := (*h1Retrier)(svc.route(a.Method, a.Path)).Retry(&a)
		if ok != tt.want {
			t.Errorf("%s: retried %v, want %v", tt.what, ok, tt.want)
		}
		if ok {
			if next.Addr == first || next.Retry == nil {
				t.Errorf("%s: went to %v (retrier %v), want another endpoint with a retrier", tt.what, next.Addr, next.Retry)
			}
			next.Done(http1.Result{Status: 200})
		}
	}
}
