package metrics

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsAreExportedWithTheirLabels(t *testing.T) {
	m := New()
	ep := netip.MustParseAddrPort("198.18.0.11:8080")
	r := m.Route(Outbound, "stockdata.stocks:80", ep, "spiffe://cluster.local/ns/stocks/sa/stockdata")
	if m.Route(Outbound, "stockdata.stocks:80", ep, "spiffe://cluster.local/ns/stocks/sa/stockdata") != r {
		t.Fatal("Route does not cache its handles")
	}
	r.Observe(200, 0, false, 3*time.Millisecond)
	r.Observe(200, 0, false, time.Millisecond)
	r.Observe(200, 14, true, time.Millisecond)
	closed := m.ConnOpened(Outbound, "http2")
	m.Detected(Outbound, 80, "http2")
	m.Bytes(Inbound, 10, 20)

	want := `
# HELP detour_responses_total Responses by HTTP status code and grpc-status (empty when none); classification is success or failure.
# TYPE detour_responses_total counter
detour_responses_total{authority="stockdata.stocks:80",classification="failure",direction="outbound",endpoint="198.18.0.11:8080",grpc_status="14",peer_identity="spiffe://cluster.local/ns/stocks/sa/stockdata",status_code="200",tls="true"} 1
detour_responses_total{authority="stockdata.stocks:80",classification="success",direction="outbound",endpoint="198.18.0.11:8080",grpc_status="0",peer_identity="spiffe://cluster.local/ns/stocks/sa/stockdata",status_code="200",tls="true"} 2
# HELP detour_tcp_open_connections Client connections the proxy holds open, by direction and detected protocol.
# TYPE detour_tcp_open_connections gauge
detour_tcp_open_connections{direction="outbound",protocol="http2"} 1
# HELP detour_protocol_detections_total Protocol detection results by direction, destination port and result (http1, http2, tls, opaque, timeout, skipped).
# TYPE detour_protocol_detections_total counter
detour_protocol_detections_total{direction="outbound",port="80",result="http2"} 1
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want),
		"detour_responses_total", "detour_tcp_open_connections", "detour_protocol_detections_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.latency); n != 1 {
		t.Fatalf("%d latency series, want 1", n)
	}
	closed()
	if v := testutil.ToFloat64(m.open.WithLabelValues(Outbound, "http2")); v != 0 {
		t.Fatalf("open connections after close = %v", v)
	}
	if v := testutil.ToFloat64(m.requests.WithLabelValues(Outbound, "stockdata.stocks:80", ep.String(), "true", "spiffe://cluster.local/ns/stocks/sa/stockdata")); v != 3 {
		t.Fatalf("requests = %v, want 3", v)
	}
}

func TestForgetDeletesOnlyThatEndpointsSeries(t *testing.T) {
	m := New()
	gone, kept := netip.MustParseAddrPort("198.18.0.11:8080"), netip.MustParseAddrPort("198.18.0.12:8080")
	inflight := m.Route(Outbound, "stockdata.stocks", gone, "")
	inflight.Observe(200, 0, false, time.Millisecond)
	m.Route(Outbound, "stockdata.stocks", gone, "spiffe://cluster.local/ns/stocks/sa/stockdata").Observe(503, -1, true, time.Millisecond)
	m.Route(Outbound, "stockdata.stocks", kept, "").Observe(200, 0, false, time.Millisecond)
	m.Route(Inbound, "198.18.0.11:8080", gone, "").Observe(200, 0, false, time.Millisecond) // another direction
	count := func() int {
		return testutil.CollectAndCount(m.requests) + testutil.CollectAndCount(m.responses) + testutil.CollectAndCount(m.latency)
	}
	if n := count(); n != 12 {
		t.Fatalf("%d series before, want 4 of each of the three", n)
	}
	m.Forget(Outbound, gone)
	if n := count(); n != 6 {
		t.Fatalf("%d series after forgetting one outbound endpoint, want its 6 gone and 6 left", n)
	}
	// A request that was in flight ends: it brings no series back.
	inflight.Observe(200, 0, false, time.Millisecond)
	inflight.Observe(500, -1, true, time.Millisecond)
	if n := count(); n != 6 {
		t.Fatalf("%d series after a forgotten route observed, want 6", n)
	}
	// The endpoint back in discovery starts again from zero, with the handles cached anew.
	again := m.Route(Outbound, "stockdata.stocks", gone, "")
	if again == inflight {
		t.Fatal("Route returned the forgotten route")
	}
	again.Observe(200, 0, false, time.Millisecond)
	if v := testutil.ToFloat64(m.requests.WithLabelValues(Outbound, "stockdata.stocks", gone.String(), "false", "")); v != 1 {
		t.Fatalf("requests of the endpoint back = %v, want 1", v)
	}
}

func BenchmarkObserve(b *testing.B) {
	m := New()
	r := m.Route(Outbound, "stockdata.stocks:80", netip.MustParseAddrPort("198.18.0.11:8080"), "")
	b.ReportAllocs()
	for b.Loop() {
		r.Observe(200, 0, false, time.Millisecond)
	}
}
