package report

import (
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/detourmesh/detour/api/telemetrypb"
	"github.com/detourmesh/detour/proxy/metrics"
)

func TestSummarizerReportsGrowthPerRouteAndCountsAResetFromZero(t *testing.T) {
	m := metrics.New()
	ep := netip.MustParseAddrPort("198.18.0.3:8080")
	out := m.Route(metrics.Outbound, "stockdata.stocks", ep, "spiffe://cluster.local/ns/stocks/sa/stockdata")
	in := m.Route(metrics.Inbound, "198.18.0.2:8080", netip.MustParseAddrPort("198.18.0.2:8080"), "")
	s := NewSummarizer()
	next := func() map[bool]uint64 {
		t.Helper()
		fams, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[bool]uint64{}
		for _, r := range s.Next(fams) {
			var inBuckets uint64
			for _, c := range r.Latency {
				inBuckets += c
			}
			if inBuckets != r.Requests || len(r.Latency) != len(s.Bounds())+1 {
				t.Errorf("route %v: %d requests, %d in %d latency buckets", r, r.Requests, inBuckets, len(r.Latency))
			}
			got[r.Inbound] = r.Requests*1000 + r.Failures
		}
		return got
	}
	out.Observe(200, 0, false, time.Millisecond)
	out.Observe(200, 14, true, 30*time.Millisecond)
	in.Observe(200, -1, false, time.Millisecond)
	if got := next(); got[false] != 2001 || got[true] != 1000 {
		t.Fatalf("first summary %v: want 2 outbound (1 failed), 1 inbound", got)
	}
	if got := next(); len(got) != 0 {
		t.Fatalf("nothing happened, the summary says %v", got)
	}
	out.Observe(503, -1, true, 2*time.Second)
	if got := next(); got[false] != 1001 || len(got) != 1 {
		t.Fatalf("summary %v: want the one failed outbound request alone", got)
	}
	m.Forget(metrics.Outbound, ep) // deleted, then made again by a new request
	m.Route(metrics.Outbound, "stockdata.stocks", ep, "spiffe://cluster.local/ns/stocks/sa/stockdata").Observe(200, 0, false, time.Millisecond)
	if got := next(); got[false] != 1000 {
		t.Fatalf("after a reset the summary says %v: want the new series' 1 request", got)
	}
}

// BenchmarkReport is a proxy's own cost of one report: gathering its registry, the deltas of
// 20 busy routes, and encoding the message.
func BenchmarkReport(b *testing.B) {
	m := metrics.New()
	var routes []*metrics.Route
	for i := range 20 {
		routes = append(routes, m.Route(metrics.Outbound, "svc.ns", netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 2)}), 8080), "spiffe://cluster.local/ns/ns/sa/sa"))
	}
	s := NewSummarizer()
	size := 0
	b.ReportAllocs()
	for b.Loop() {
		for _, r := range routes {
			r.Observe(200, 0, false, time.Millisecond)
		}
		fams, err := m.Registry.Gather()
		if err != nil {
			b.Fatal(err)
		}
		raw, err := proto.Marshal(&telemetrypb.ReportRequest{Routes: s.Next(fams)})
		if err != nil {
			b.Fatal(err)
		}
		size = len(raw)
	}
	b.ReportMetric(float64(size), "bytes/report")
}
