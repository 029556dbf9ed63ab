package telemetry

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const (
	webID   = "spiffe://cluster.local/ns/stocks/sa/stockweb"
	stockID = "spiffe://cluster.local/ns/stocks/sa/stockdata"
)

var (
	web    = Pod{"stocks", "stockweb-6d4cf56db6-x7k2p"}
	stock0 = Pod{"stocks", "stockdata-0"}
	stock1 = Pod{"stocks", "stockdata-1"}
)

// latencyAt puts n requests in the store's bucket for d.
func latencyAt(n uint64, d time.Duration) []uint64 {
	l := make([]uint64, nBuckets)
	for i, b := range Bounds {
		if d.Seconds() <= b {
			l[i] = n
			return l
		}
	}
	l[nBuckets-1] = n
	return l
}

// demoStore is StockWeb calling two StockData replicas over mutual TLS for a minute, one
// report a second: replica 0 serving 30 calls a second, all good, replica 1 10, half failing.
func demoStore(t *testing.T) (*Store, *time.Time) {
	t.Helper()
	clock := time.Unix(1_800_000_000, 0)
	s := NewStore(0, func() time.Time { return clock })
	s.Hello(web, webID, []netip.Addr{netip.MustParseAddr("198.18.0.2")})
	s.Hello(stock0, stockID, []netip.Addr{netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("fd00:de70::3")})
	s.Hello(stock1, stockID, []netip.Addr{netip.MustParseAddr("198.18.0.4")})
	m := bucketMap(Bounds)
	for range 60 {
		clock = clock.Add(time.Second)
		s.Add(web, clock, time.Second, m, []RouteCounts{
			{Authority: "stockdata.stocks", Endpoint: "198.18.0.3:8080", Peer: stockID, Requests: 30, Latency: latencyAt(30, 2*time.Millisecond)},
			{Authority: "stockdata.stocks", Endpoint: "198.18.0.4:8080", Peer: stockID, Requests: 10, Failures: 5, Latency: latencyAt(10, 20*time.Millisecond)},
		})
		s.Add(stock0, clock, time.Second, m, []RouteCounts{{Inbound: true, Authority: "198.18.0.3:8080", Endpoint: "198.18.0.3:8080", Peer: webID, Requests: 30, Latency: latencyAt(30, time.Millisecond)}})
		s.Add(stock1, clock, time.Second, m, []RouteCounts{{Inbound: true, Authority: "198.18.0.4:8080", Endpoint: "198.18.0.4:8080", Peer: webID, Requests: 10, Failures: 5, Latency: latencyAt(10, 15*time.Millisecond)}})
	}
	return s, &clock
}

func stat(t *testing.T, s *Store, q Query) map[string]Row {
	t.Helper()
	st, err := s.Stat(q)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]Row{}
	for _, r := range st.Rows {
		rows[r.Name] = r
	}
	return rows
}

func near(t *testing.T, what string, got *float64, want float64) {
	t.Helper()
	if got == nil || math.Abs(*got-want) > want*0.05+1e-9 {
		g := "null"
		if got != nil {
			g = fmt.Sprint(*got)
		}
		t.Errorf("%s = %s, want %v", what, g, want)
	}
}

func TestStatShowsServicesWithTheirReplicasAndPodsAsTheyServe(t *testing.T) {
	s, _ := demoStore(t)
	svc := stat(t, s, Query{Resource: Resource{Kind: KindService}, Window: time.Minute})
	r, ok := svc["stockdata.stocks"]
	if !ok || len(svc) != 1 {
		t.Fatalf("services %v: want stockdata.stocks alone", svc)
	}
	if r.Requests != 2400 || r.Failures != 300 {
		t.Errorf("stockdata.stocks: %d requests, %d failed, want 2400 and 300", r.Requests, r.Failures)
	}
	rps := r.RPS
	near(t, "stockdata.stocks rps", &rps, 40)
	near(t, "stockdata.stocks success", r.SuccessRate, 0.875)
	near(t, "stockdata.stocks mTLS share", r.MTLSShare, 1)
	if len(r.Replicas) != 2 || r.Replicas[0].Name != "stockdata-0" || r.Replicas[1].Name != "stockdata-1" {
		t.Fatalf("replicas %+v: want stockdata-0 and stockdata-1, named by the pods that reported their addresses", r.Replicas)
	}
	near(t, "stockdata-0's success as called", r.Replicas[0].SuccessRate, 1)
	near(t, "stockdata-1's success as called", r.Replicas[1].SuccessRate, 0.5)
	near(t, "stockdata-0's p50", r.Replicas[0].P50, 1.75) // within (1 ms, 2.5 ms]
	if *r.Replicas[1].P99 < 10 || *r.Replicas[1].P99 > 25 {
		t.Errorf("stockdata-1's p99 %v ms: want within its bucket (10, 25]", *r.Replicas[1].P99)
	}

	pods := stat(t, s, Query{Resource: Resource{Kind: KindPod}, Window: time.Minute})
	near(t, "stockdata-0 success", pods["stockdata-0"].SuccessRate, 1)
	near(t, "stockdata-1 success", pods["stockdata-1"].SuccessRate, 0.5)
	if w := pods[web.Name]; w.Requests != 0 || w.SuccessRate != nil {
		t.Errorf("stockweb serves nothing, its row says %+v", w)
	}
	deploys := stat(t, s, Query{Resource: Resource{Kind: KindDeployment}, Window: time.Minute})
	if d := deploys["stockdata"]; d.Requests != 2400 {
		t.Errorf("deployment stockdata: %+v, want its two pods' 2400 requests", d)
	}
	if _, ok := deploys["stockweb"]; !ok {
		t.Errorf("deployments %v: want stockweb (pod %s) listed", deploys, web.Name)
	}

	from := stat(t, s, Query{Resource: Resource{Kind: KindPod}, From: Resource{KindDeployment, "stockweb"}, Window: time.Minute})
	if len(from) != 2 || from["stockdata-1"].Requests != 600 {
		t.Errorf("pods called from deploy/stockweb: %+v", from)
	}
	to := stat(t, s, Query{Resource: Resource{Kind: KindDeployment}, To: Resource{KindPod, "stockdata-1"}, Window: time.Minute})
	if len(to) != 1 || to["stockweb"].Requests != 600 {
		t.Errorf("callers of pod/stockdata-1: %+v", to)
	}
	one := stat(t, s, Query{Resource: Resource{KindPod, "stockdata-1"}, Window: time.Minute})
	if len(one) != 1 {
		t.Errorf("pod/stockdata-1: %+v", one)
	}
	if _, err := s.Stat(Query{Resource: Resource{Kind: KindService}, To: Resource{KindPod, "x"}}); err == nil {
		t.Error("stat svc --to: no error")
	}
}

func TestWindowCountsOnlyRecentSlotsAndSeriesExpire(t *testing.T) {
	s, clock := demoStore(t)
	*clock = clock.Add(2 * time.Minute)
	pods := stat(t, s, Query{Resource: Resource{Kind: KindPod}, Window: time.Minute})
	if r := pods["stockdata-0"]; r.Requests != 0 {
		t.Errorf("two minutes after the last request, a one-minute window holds %d", r.Requests)
	}
	pods = stat(t, s, Query{Resource: Resource{Kind: KindPod}, Window: 10 * time.Minute})
	if r := pods["stockdata-0"]; r.Requests != 1800 {
		t.Errorf("the ten-minute window holds %d of stockdata-0's 1800 requests", r.Requests)
	}
	*clock = clock.Add(Window)
	s.Expire()
	if st := s.Stats(); st.Series != 0 {
		t.Errorf("%d series left a window after their last report", st.Series)
	}
	tl := s.Timeline(Resource{KindService, "stockdata.stocks"})
	if len(tl) != Slots {
		t.Errorf("timeline of %d points, want %d", len(tl), Slots)
	}
}

func TestTimelineTopAndGraph(t *testing.T) {
	s, _ := demoStore(t)
	var total uint64
	for _, p := range s.Timeline(Resource{KindService, "stockdata.stocks"}) {
		total += p.Requests
	}
	if total != 2400 {
		t.Errorf("the timeline holds %d requests, want 2400", total)
	}
	top := s.Top(time.Minute, 1)
	if len(top) != 1 || top[0].To != "stocks/stockdata-0" || top[0].From != web.String() {
		t.Errorf("top: %+v, want stockweb -> stockdata-0 first", top)
	}
	g := s.Graph(time.Minute)
	want := map[[2]string]bool{{"deploy/stocks/stockweb", "svc/stockdata.stocks"}: true, {"svc/stockdata.stocks", "deploy/stocks/stockdata"}: true}
	if len(g.Edges) != 2 {
		t.Fatalf("graph edges %+v", g.Edges)
	}
	for _, e := range g.Edges {
		if !want[[2]string{e.From, e.To}] || e.Requests != 2400 {
			t.Errorf("graph edge %+v", e)
		}
	}
}

func TestSeriesPastTheCapAreDroppedAndCounted(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	s := NewStore(3, func() time.Time { return clock })
	m := bucketMap(Bounds)
	var routes []RouteCounts
	for i := range 5 {
		routes = append(routes, RouteCounts{Authority: "a", Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 80).String(), Requests: 1})
	}
	s.Add(web, clock, time.Second, m, routes)
	if st := s.Stats(); st.Series != 3 || st.Dropped != 2 {
		t.Errorf("stats %+v: want 3 series held, 2 dropped", st)
	}
}

func TestWorkloadIsThePodsNameWithoutItsReplicaSuffixes(t *testing.T) {
	for pod, want := range map[string]string{
		"stockweb-6d4cf56db6-x7k2p":  "stockweb",
		"stock-data-7c9f8d6b5-abcde": "stock-data",
		"stockdata-0":                "stockdata",
		"redis-master-12":            "redis-master",
		"standalone":                 "standalone",
		"web-abc":                    "web-abc",
	} {
		if got := Workload(pod); got != want {
			t.Errorf("Workload(%q) = %q, want %q", pod, got, want)
		}
	}
}

func TestQuantileInterpolatesWithinBuckets(t *testing.T) {
	l := make([]uint64, nBuckets)
	l[1], l[3] = 50, 50 // (0.5, 1] ms and (2.5, 5] ms
	if q := Quantile(0.5, l); math.Abs(q-0.001) > 1e-9 {
		t.Errorf("p50 = %v, want 1 ms", q)
	}
	if q := Quantile(0.99, l); q <= 0.0025 || q > 0.005 {
		t.Errorf("p99 = %v, want within (2.5, 5] ms", q)
	}
	if !math.IsNaN(Quantile(0.5, make([]uint64, nBuckets))) {
		t.Error("the quantile of nothing is not NaN")
	}
}

func TestBucketsOfOtherBoundsLandInTheNextStoredBucket(t *testing.T) {
	m := bucketMap([]float64{0.001, 0.003, 100})
	if m[0] != 1 || m[1] != 3 || m[2] != nBuckets-1 || m[3] != nBuckets-1 {
		t.Errorf("bucketMap = %v", m)
	}
}

func TestWriteStatPrintsAnAlignedTableWithReplicasBeneathTheirService(t *testing.T) {
	s, _ := demoStore(t)
	st, err := s.Stat(Query{Resource: Resource{Kind: KindService}, Window: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := WriteStat(&b, st); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 4 || !strings.HasPrefix(strings.TrimSpace(lines[0]), "NAME") ||
		!strings.Contains(lines[1], "stockdata.stocks") || !strings.Contains(lines[3], "stockdata-1") || !strings.Contains(lines[3], "50.00%") {
		t.Fatalf("table:\n%s", b.String())
	}
	for _, l := range lines {
		if len(l) != len(lines[0]) || len(l) > 100 {
			t.Errorf("line %q: %d columns, the header %d (aligned, at most 100)", l, len(l), len(lines[0]))
		}
	}
	b.Reset()
	WriteStat(&b, Stat{Rows: []Row{{Name: "idle"}}})
	if !strings.Contains(b.String(), "idle") || strings.Count(b.String(), " -") < 5 {
		t.Errorf("a row without requests should show - for its figures:\n%s", b.String())
	}
}
