package metrics

import (
	"bytes"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// TestEveryMetricPassesPromtool fills every metric and runs `promtool check metrics` on the
// exposition, as Prometheus's own linter judges names, help and types.
func TestEveryMetricPassesPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("DETOUR_REQUIRE_ROOT") != "" {
			t.Fatal("promtool is not installed (Debian: prometheus)")
		}
		t.Skip("promtool is not installed")
	}
	m := New()
	ep := netip.MustParseAddrPort("198.18.0.11:8080")
	m.Route(Outbound, "stockdata.stocks:80", ep, "spiffe://cluster.local/ns/stocks/sa/stockdata").Observe(503, 14, true, time.Millisecond)
	m.ConnOpened(Outbound, "http2")
	m.Bytes(Outbound, 1, 2)
	m.Denied(Inbound, 8080, "spiffe://cluster.local/ns/web/sa/stockweb")
	m.Refused(Inbound, "limit")
	m.Panicked(Outbound, "h2")
	m.Detected(Outbound, 80, "declared-http2")
	m.Retried("stockdata.stocks", ep, "refused")
	m.BudgetExhausted("stockdata.stocks")
	m.Ejected("stockdata.stocks", ep)
	m.TimedOut("stockdata.stocks")
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.Bytes()
	for _, name := range []string{"detour_retries_total", "detour_retry_budget_exhausted_total", "detour_endpoint_ejections_total", "detour_request_timeouts_total"} {
		if !bytes.Contains(body, []byte(name+"{")) {
			t.Errorf("%s is not exported", name)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
