package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/detourmesh/detour/examples/stockkube/stockpb"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// load is the outcome of one load run.
type load struct {
	calls    int
	errors   int
	elapsed  time.Duration
	p50, p90 time.Duration
	p99      time.Duration
}

func (l load) rps() float64 { return float64(l.calls) / l.elapsed.Seconds() }

// runLoad sends unary GetQuote calls with 1 KiB requests and replies over cc: at rate calls a
// second (0: as fast as `inflight` concurrent callers go) for d, at most maxCalls calls.
func runLoad(cc *grpc.ClientConn, rate int, inflight int, d time.Duration, maxCalls int) load {
	client := stockpb.NewStockDataClient(cc)
	req := &stockpb.QuoteRequest{Symbol: "ACME", Padding: make([]byte, 1024), ReplyPadding: 1024}
	ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Second)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	tickets := make(chan struct{}, inflight)
	start := time.Now()
	var wg sync.WaitGroup
	call := func() {
		defer wg.Done()
		t0 := time.Now()
		_, err := client.GetQuote(ctx, req)
		el := time.Since(t0)
		mu.Lock()
		if err != nil {
			errs++
		} else {
			lat = append(lat, el)
		}
		mu.Unlock()
		<-tickets
	}
	sent := 0
	if rate > 0 {
		interval := time.Second / time.Duration(rate)
		next := start
		for sent < maxCalls && time.Since(start) < d {
			if wait := time.Until(next); wait > 0 {
				time.Sleep(wait)
			}
			next = next.Add(interval)
			tickets <- struct{}{}
			wg.Add(1)
			sent++
			go call()
		}
	} else {
		for sent < maxCalls && time.Since(start) < d {
			tickets <- struct{}{}
			wg.Add(1)
			sent++
			go call()
		}
	}
	wg.Wait()
	l := load{calls: len(lat), errors: errs, elapsed: time.Since(start)}
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	l.p50, l.p90, l.p99 = pct(0.50), pct(0.90), pct(0.99)
	return l
}

// procUsage is a process's CPU time and peak memory, from /proc.
type procUsage struct {
	cpu   time.Duration
	rssKB int
}

func usage(pid int) procUsage {
	var u procUsage
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		ut, _ := strconv.Atoi(f[11])
		st, _ := strconv.Atoi(f[12])
		u.cpu = time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100
	}
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for line := range strings.Lines(string(status)) {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				u.rssKB, _ = strconv.Atoi(strings.Fields(v)[0])
			}
		}
	}
	return u
}

// BenchmarkMesh measures gRPC unary calls (1 KiB each way) over one client connection, direct
// and through two proxies (client -> outbound proxy -> inbound proxy -> server), on the
// namespace topology, at a fixed 1000 calls/s and at saturation (16 in flight). Run it with
// -benchtime 1x: each sub-benchmark is one timed load run, reported with b.ReportMetric.
func BenchmarkMesh(b *testing.B) {
	nstest.RequireRoot(b)
	topo := nstest.Topology(b)
	directClient, directServer := addPod(b, topo, "direct-client"), addPod(b, topo, "direct-server")
	meshClient, meshServer := addPod(b, topo, "mesh-client"), addPod(b, topo, "mesh-server")
	tlsClient, tlsServer := addPod(b, topo, "mtls-client"), addPod(b, topo, "mtls-server")
	serveStockData(b, directServer, "direct", 0)
	serveStockData(b, meshServer, "meshed", 0)
	serveStockData(b, tlsServer, "mtls", 0)
	vip := netip.MustParseAddrPort("198.19.0.20:80")
	disc := writeDiscovery(b, fmt.Sprintf("trustDomain: cluster.local\nservices:\n  - name: stockdata.stocks\n    addresses: [%q]\n    endpoints:\n      - address: %q\n",
		vip.String(), netip.AddrPortFrom(meshServer.IPv4, 8080).String()))
	proxies := map[string][2]*meshPod{}
	proxies["mesh"] = [2]*meshPod{mesh(b, meshClient, disc, "--log-level", "warn"), mesh(b, meshServer, "", "--log-level", "warn")}
	// The same path with mutual TLS between the two proxies, identities from a controller.
	ca := newMeshCA(b, topo, 24*time.Hour)
	cf, sf := ca.meshFlags(b, spiffe("bench", "client")), ca.meshFlags(b, spiffe("bench", "server"))
	ca.start(b, stockDiscoveryWithIdentity(vip, []*netns.Pod{tlsServer}, spiffe("bench", "server")))
	proxies["mtls"] = [2]*meshPod{meshWithIdentity(b, tlsClient, append(cf, "--log-level", "warn")),
		meshWithIdentity(b, tlsServer, append(sf, "--log-level", "warn"))}

	direct := grpcClientIn(b, directClient.NS, netip.AddrPortFrom(directServer.IPv4, 8080).String())
	meshed := grpcClientIn(b, meshClient.NS, vip.String())
	mtlsed := grpcClientIn(b, tlsClient.NS, vip.String())
	for _, cc := range []*grpc.ClientConn{direct, meshed, mtlsed} { // warm up connections and pools
		runLoad(cc, 0, 16, 300*time.Millisecond, 2000)
	}
	seconds := 3 * time.Second
	if s := os.Getenv("DETOUR_BENCH_SECONDS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			seconds = time.Duration(n) * time.Second
		}
	}
	results := map[string]load{}
	for _, mode := range []struct {
		name     string
		rate     int
		maxCalls int
	}{{"1000rps", 1000, 1000 * int(seconds/time.Second)}, {"saturation", 0, 200000}} {
		for _, path := range []struct {
			name string
			cc   *grpc.ClientConn
		}{{"direct", direct}, {"mesh", meshed}, {"mtls", mtlsed}} {
			b.Run(path.name+"-"+mode.name, func(b *testing.B) {
				for b.Loop() {
					pp := proxies[path.name]
					var before, after [2]procUsage
					if pp[0] != nil {
						before = [2]procUsage{usage(pp[0].proxy.Process.Pid), usage(pp[1].proxy.Process.Pid)}
					}
					l := runLoad(path.cc, mode.rate, 16, seconds, mode.maxCalls)
					if pp[0] != nil {
						after = [2]procUsage{usage(pp[0].proxy.Process.Pid), usage(pp[1].proxy.Process.Pid)}
					}
					if l.errors > 0 {
						b.Fatalf("%d calls failed", l.errors)
					}
					results[b.Name()] = l
					b.ReportMetric(float64(l.p50.Microseconds()), "p50-µs")
					b.ReportMetric(float64(l.p90.Microseconds()), "p90-µs")
					b.ReportMetric(float64(l.p99.Microseconds()), "p99-µs")
					b.ReportMetric(l.rps(), "calls/s")
					if pp[0] != nil {
						for i, side := range []string{"out", "in"} {
							cpu := (after[i].cpu - before[i].cpu).Seconds() / float64(l.calls) * 1000
							b.ReportMetric(cpu, side+"-cpu-s/1000calls")
							b.ReportMetric(float64(after[i].rssKB)/1024, side+"-rss-MB")
						}
					}
				}
			})
		}
	}
	for _, mode := range []string{"1000rps", "saturation"} {
		d := results["BenchmarkMesh/direct-"+mode]
		for _, path := range []string{"mesh", "mtls"} {
			m := results["BenchmarkMesh/"+path+"-"+mode]
			if d.calls == 0 || m.calls == 0 {
				continue
			}
			b.Logf("%-10s %-4s added by two proxies: p50 %+.3f ms, p90 %+.3f ms, p99 %+.3f ms; throughput %s/direct %.2f",
				mode, path, ms(m.p50-d.p50), ms(m.p90-d.p90), ms(m.p99-d.p99), path, m.rps()/d.rps())
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
