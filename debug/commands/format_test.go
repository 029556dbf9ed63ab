package commands

import (
	"testing"
	"time"

	"github.com/detourmesh/detour/proxy/tap"
)

func TestTableFormats(t *testing.T) {
	for d, want := range map[time.Duration]string{
		1500 * time.Microsecond: "2ms", 42 * time.Second: "42s", 4*time.Minute + 12*time.Second: "4m12s",
		5*time.Hour + 3*time.Minute: "5h3m", 50 * time.Hour: "2d2h", -3 * time.Second: "-3s",
	} {
		if got := short(d); got != want {
			t.Errorf("short(%s) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[uint64]string{512: "512B", 12_345: "12.3kB", 4_100_000: "4.1MB", 7_000_000_000: "7.0GB"} {
		if got := bytesText(n); got != want {
			t.Errorf("bytesText(%d) = %q, want %q", n, got, want)
		}
	}
	for id, want := range map[string]string{
		"spiffe://cluster.local/ns/stocks/sa/stockweb": "stocks/sa/stockweb",
		"spiffe://other.td/ns/stocks/sa/stockweb":      "spiffe://other.td/ns/stocks/sa/stockweb",
		"spiffe://cluster.local/custom/path":           "spiffe://cluster.local/custom/path",
		"":                                             "-",
	} {
		if got := identityPath(id); got != want {
			t.Errorf("identityPath(%q) = %q, want %q", id, got, want)
		}
	}
	for ms, want := range map[float64]string{0.42: "0.42ms", 3.5: "3.50ms", 12.345: "12.3ms", 456.7: "457ms", 1234: "1.23s"} {
		if got := latencyText(ms); got != want {
			t.Errorf("latencyText(%v) = %q, want %q", ms, got, want)
		}
	}
}

func TestTapColumns(t *testing.T) {
	code := func(c int) *int { return &c }
	for _, tt := range []struct {
		line            tap.Line
		request, status string
	}{
		{tap.Line{Method: "POST", Path: "/stockkube.v1.StockData/GetQuote", GRPCMethod: "stockkube.v1.StockData/GetQuote", Status: 200, GRPCStatus: code(0)},
			"StockData/GetQuote", "OK"},
		{tap.Line{GRPCMethod: "a.very.long.package.name.Service/AnExtremelyLongMethodName", Status: 200, GRPCStatus: code(14)},
			"…tremelyLongMethodName", "UNAVAILABLE"}, // the package dropped, then cut from the left
		{tap.Line{GRPCMethod: "x.S/M", Status: 503, GRPCStatus: code(14)}, "x.S/M", "503 UNAVAILABLE"},
		{tap.Line{Method: "GET", Path: "/api/quotes", Status: 200}, "GET /api/quotes", "200"},
		{tap.Line{Method: "GET", Path: "/a/path/longer/than/the/column", Status: 404}, "GET /a/path/longer/th…", "404"},
		{tap.Line{Method: "GET", Path: "/", Error: "no service at 198.19.0.10:80 any more"}, "GET /", "error"},
	} {
		if got := requestText(tt.line); got != tt.request {
			t.Errorf("requestText(%+v) = %q, want %q", tt.line, got, tt.request)
		}
		if got := statusText(tt.line); got != tt.status {
			t.Errorf("statusText(%+v) = %q, want %q", tt.line, got, tt.status)
		}
	}
}
