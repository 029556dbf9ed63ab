package telemetry

import (
	"bytes"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"

	"github.com/detourmesh/detour/api/telemetrypb"
	"github.com/detourmesh/detour/proxy/metrics"
	"github.com/detourmesh/detour/proxy/report"
)

// MemoryBound is the collector's documented bound (README) at DefaultMaxSeries.
const MemoryBound = 48 << 20

// simulatedProxy is one proxy's real metrics (proxy/metrics) with routes routes busy: its
// outbound calls to services of five endpoints each, and its inbound side.
func simulatedProxy(i, routes int) *metrics.Metrics {
	m := metrics.New()
	for r := range routes {
		ep := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(r / 200), byte(r%200 + 2)}), 8080)
		dir, auth := metrics.Outbound, fmt.Sprintf("svc-%d.ns-%d", r/5, i%10)
		if r == 0 {
			dir, auth = metrics.Inbound, fmt.Sprintf("198.18.1.%d:8080", i)
		}
		route := m.Route(dir, auth, ep, "spiffe://cluster.local/ns/ns/sa/sa")
		for n := range 20 {
			route.Observe(200, 0, false, time.Duration(n)*time.Millisecond)
		}
		route.Observe(200, 14, true, 3*time.Millisecond)
	}
	return m
}

func observeAll(ms []*metrics.Metrics, routes int) {
	for i, m := range ms {
		for r := range routes {
			ep := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(r / 200), byte(r%200 + 2)}), 8080)
			dir, auth := metrics.Outbound, fmt.Sprintf("svc-%d.ns-%d", r/5, i%10)
			if r == 0 {
				dir, auth = metrics.Inbound, fmt.Sprintf("198.18.1.%d:8080", i)
			}
			m.Route(dir, auth, ep, "spiffe://cluster.local/ns/ns/sa/sa").Observe(200, 0, false, 2*time.Millisecond)
		}
	}
}

// BenchmarkCollectionCost compares, in one run, the controller's CPU per 10 s interval for
// 100 proxies of 20 busy routes each, both ways of collecting: decoding the proxies' pushed
// summaries (what the controller does) and scraping, parsing the text /metrics of each with
// prometheus/common's parser and turning it into the same deltas. Both start from bytes on
// the controller's side: neither counts the transport (the push rides a stream already open;
// a scrape would add an HTTP request per proxy) nor the proxies' own work.
func BenchmarkCollectionCost(b *testing.B) {
	const proxies, routes = 100, 20
	ms := make([]*metrics.Metrics, proxies)
	sums := make([]*report.Summarizer, proxies)
	for i := range ms {
		ms[i] = simulatedProxy(i, routes)
		sums[i] = report.NewSummarizer()
		fams, _ := ms[i].Registry.Gather()
		sums[i].Next(fams)
	}
	observeAll(ms, routes)
	pushed := make([][]byte, proxies)
	scraped := make([][]byte, proxies)
	for i, m := range ms {
		fams, err := m.Registry.Gather()
		if err != nil {
			b.Fatal(err)
		}
		req := &telemetrypb.ReportRequest{UnixMs: time.Now().UnixMilli(), IntervalMs: 10000, Routes: sums[i].Next(fams), LatencyBounds: sums[i].Bounds()}
		if pushed[i], err = proto.Marshal(req); err != nil {
			b.Fatal(err)
		}
		var text bytes.Buffer
		for _, f := range fams {
			if _, err := expfmt.MetricFamilyToText(&text, f); err != nil {
				b.Fatal(err)
			}
		}
		scraped[i] = text.Bytes()
	}
	pushStore, scrapeStore := NewStore(0, nil), NewStore(0, nil)
	srv := NewServer(pushStore, nil, nil)
	scrapeSums := make([]*report.Summarizer, proxies)
	for i := range scrapeSums {
		scrapeSums[i] = report.NewSummarizer()
	}
	mapping := bucketMap(Bounds)
	var pushTime, scrapeTime time.Duration
	var pushBytes, scrapeBytes int
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		for i, raw := range pushed {
			var req telemetrypb.ReportRequest
			if err := proto.Unmarshal(raw, &req); err != nil {
				b.Fatal(err)
			}
			if err := srv.add(Pod{"ns", fmt.Sprint("pod-", i)}, mapping, &req); err != nil {
				b.Fatal(err)
			}
			pushBytes += len(raw)
		}
		pushTime += time.Since(start)
		start = time.Now()
		for i, raw := range scraped {
			parser := expfmt.NewTextParser(model.UTF8Validation)
			fams, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
			if err != nil {
				b.Fatal(err)
			}
			list := make([]*dto.MetricFamily, 0, len(fams))
			for _, f := range fams {
				list = append(list, f)
			}
			scrapeStore.Add(Pod{"ns", fmt.Sprint("pod-", i)}, time.Now(), 10*time.Second, mapping, counts(scrapeSums[i].Next(list)))
			scrapeBytes += len(raw)
		}
		scrapeTime += time.Since(start)
	}
	n := float64(b.N)
	b.ReportMetric(float64(pushTime.Microseconds())/n/1000, "push-ms/interval")
	b.ReportMetric(float64(scrapeTime.Microseconds())/n/1000, "scrape-ms/interval")
	b.ReportMetric(float64(scrapeTime)/float64(pushTime), "scrape/push")
	b.ReportMetric(float64(pushBytes)/n/1024, "push-KiB/interval")
	b.ReportMetric(float64(scrapeBytes)/n/1024, "scrape-KiB/interval")
}

func counts(routes []*telemetrypb.Route) []RouteCounts {
	out := make([]RouteCounts, len(routes))
	for i, r := range routes {
		out[i] = RouteCounts{Inbound: r.Inbound, Authority: r.Authority, Endpoint: r.Endpoint, Peer: r.PeerIdentity,
			Requests: r.Requests, Failures: r.Failures, Latency: r.Latency}
	}
	return out
}

// BenchmarkCollectorMemory fills the store as 100 simulated proxies of 100 busy routes each
// would over the whole window (every slot of every series, up to DefaultMaxSeries, each label
// as long as a report may make it), then has them report as many new series again (refused at
// the cap), and fails if the heap the store holds exceeds MemoryBound.
func BenchmarkCollectorMemory(b *testing.B) {
	const proxies, routes = 100, 100
	lat := make([]uint64, len(Bounds)+1)
	for i := range lat {
		lat[i] = 3
	}
	mapping := bucketMap(Bounds)
	batch := func(p, offset int) []RouteCounts {
		rs := make([]RouteCounts, routes)
		for r := range rs {
			rs[r] = RouteCounts{Authority: long(fmt.Sprintf("service-%d.namespace-%d.svc.cluster.local:8080", (r+offset)/5, p%10)),
				Endpoint: long(fmt.Sprintf("198.18.%d.%d:8080", (r+offset)/200, (r+offset)%200+2)),
				Peer:     long(fmt.Sprintf("spiffe://cluster.local/ns/namespace-%d/sa/service-%d", p%10, (r+offset)/5)),
				Requests: 60, Failures: 1, Latency: lat}
		}
		return rs
	}
	held, past := make([][]RouteCounts, proxies), make([][]RouteCounts, proxies)
	for p := range proxies {
		held[p], past[p] = batch(p, 0), batch(p, routes)
	}
	var heap, series float64
	var dropped uint64
	for range b.N {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		clock := time.Unix(1_800_000_000, 0)
		s := NewStore(0, func() time.Time { return clock })
		for slot := range Slots {
			at := clock.Add(time.Duration(slot) * Resolution)
			for p := range proxies {
				pod := Pod{fmt.Sprintf("namespace-%d", p%10), fmt.Sprintf("service-%d-7d9f8c6b5-x%04d", p, p)}
				if slot == 0 {
					s.Hello(pod, "spiffe://cluster.local/ns/x/sa/y", []netip.Addr{netip.AddrFrom4([4]byte{198, 18, 9, byte(p)})})
				}
				s.Add(pod, at, Resolution, mapping, held[p])
				if slot == Slots-1 {
					s.Add(pod, at, Resolution, mapping, past[p]) // past the cap
				}
			}
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap = float64(after.HeapAlloc) - float64(before.HeapAlloc)
		st := s.Stats()
		series, dropped = float64(st.Series), st.Dropped
		runtime.KeepAlive(s)
	}
	b.ReportMetric(heap/(1<<20), "MiB")
	b.ReportMetric(series, "series")
	b.ReportMetric(heap/series, "B/series")
	b.ReportMetric(float64(dropped), "dropped")
	if series != DefaultMaxSeries || dropped == 0 {
		b.Fatalf("%v series held and %d dropped: want the cap (%d) held and the rest dropped", series, dropped, DefaultMaxSeries)
	}
	if heap > MemoryBound {
		b.Fatalf("the collector holds %.1f MiB at %v series: over its documented bound of %d MiB", heap/(1<<20), series, MemoryBound>>20)
	}
}

// long pads a label to the longest a report may carry.
func long(s string) string { return s + strings.Repeat("x", maxLabelLength-len(s)) }
