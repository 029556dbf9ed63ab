package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// procUsage is a process's CPU time, context switches and peak memory, from /proc.
type procUsage struct {
	cpu   time.Duration // time on a CPU, summed over its threads (schedstat: ns, not ticks)
	csw   int           // voluntary context switches (sleeps), summed over its threads
	rssKB int           // peak resident set
}

func usage(pid int) procUsage {
	var u procUsage
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s/", pid, t.Name())
		if ss, err := os.ReadFile(dir + "schedstat"); err == nil {
			n, _ := strconv.ParseInt(strings.Fields(string(ss))[0], 10, 64)
			u.cpu += time.Duration(n)
		}
		if v, ok := procField(dir+"status", "voluntary_ctxt_switches:"); ok {
			u.csw += v
		}
	}
	u.rssKB, _ = procField(fmt.Sprintf("/proc/%d/status", pid), "VmHWM:")
	return u
}

// procField reads the number after name in a /proc status file.
func procField(path, name string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, name); ok {
			n, err := strconv.Atoi(strings.Fields(v)[0])
			return n, err == nil
		}
	}
	return 0, false
}

// BenchmarkMesh measures gRPC unary calls (1 KiB each way) over one client connection, direct
// and through two proxies (client -> outbound proxy -> inbound proxy -> server), on the
// namespace topology, at a fixed 1000 calls/s and at saturation (16 in flight); and, as a
// reference, through two HAProxy instances on the same topology. Run it with
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
	cf, sf := ca.meshFlags(b, spiffeID("bench", "client")), ca.meshFlags(b, spiffeID("bench", "server"))
	ca.start(b, stockDiscoveryWithIdentity(vip, []*netns.Pod{tlsServer}, spiffeID("bench", "server")))
	proxies["mtls"] = [2]*meshPod{meshWithIdentity(b, tlsClient, append(cf, "--log-level", "warn")),
		meshWithIdentity(b, tlsServer, append(sf, "--log-level", "warn"))}

	// References: the same two hops through other proxies, so that what this machine's kernel
	// and scheduler cost any proxy is measured in the same run. HAProxy (C, one event loop, HTTP/2
	// on both sides, one thread like the proxy, no TLS, no redirect), and socat: a byte relay
	// (no HTTP, no balancing), the least a userspace hop can do. A tool not installed leaves its
	// path out (make bench installs both).
	refs := map[string]*netns.Pod{}
	for _, ref := range []struct {
		name  string
		start func(client, server *netns.Pod) [2]*meshPod
	}{
		{"haproxy", func(client, server *netns.Pod) [2]*meshPod {
			return [2]*meshPod{
				haproxy(b, client, "127.0.0.1:7140", netip.AddrPortFrom(server.IPv4, 7143).String()),
				haproxy(b, server, ":7143", "127.0.0.1:8080")}
		}},
		{"socat", func(client, server *netns.Pod) [2]*meshPod {
			// One connection each, no fork: the measured process is the one that relays.
			return [2]*meshPod{
				refProxy(b, client, "127.0.0.1:7140", exec.Command("socat", "TCP-LISTEN:7140,bind=127.0.0.1,reuseaddr,nodelay",
					"TCP:"+netip.AddrPortFrom(server.IPv4, 7143).String()+",nodelay")),
				refProxy(b, server, ":7143", exec.Command("socat", "TCP-LISTEN:7143,reuseaddr,nodelay", "TCP:127.0.0.1:8080,nodelay"))}
		}},
	} {
		if _, err := exec.LookPath(ref.name); err != nil {
			b.Logf("%s not installed: its reference path is left out (make bench installs it)", ref.name)
			continue
		}
		client, server := addPod(b, topo, ref.name+"-client"), addPod(b, topo, ref.name+"-server")
		serveStockData(b, server, ref.name, 0)
		proxies[ref.name] = ref.start(client, server)
		refs[ref.name] = client
	}

	direct := grpcClientIn(b, directClient.NS, netip.AddrPortFrom(directServer.IPv4, 8080).String())
	meshed := grpcClientIn(b, meshClient.NS, vip.String())
	mtlsed := grpcClientIn(b, tlsClient.NS, vip.String())
	type path struct {
		name string
		cc   *grpc.ClientConn
	}
	paths := []path{{"direct", direct}, {"mesh", meshed}, {"mtls", mtlsed}}
	for _, name := range []string{"haproxy", "socat"} {
		if client := refs[name]; client != nil {
			paths = append(paths, path{name, grpcClientIn(b, client.NS, "127.0.0.1:7140")})
		}
	}
	for _, p := range paths { // warm up connections and pools
		cc := p.cc
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
		for _, path := range paths {
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
							b.ReportMetric(float64(after[i].csw-before[i].csw)/float64(l.calls), side+"-sleeps/call")
							b.ReportMetric(float64(after[i].rssKB)/1024, side+"-rss-MB")
						}
					}
				}
			})
		}
	}
	for _, mode := range []string{"1000rps", "saturation"} {
		d := results["BenchmarkMesh/direct-"+mode]
		for _, path := range []string{"mesh", "mtls", "haproxy", "socat"} {
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

// haproxy runs HAProxy in pod as an HTTP/2 (h2c) proxy from listen to upstream, for the
// benchmark's reference path, and stops it when tb ends.
func haproxy(tb testing.TB, pod *netns.Pod, listen, upstream string) *meshPod {
	tb.Helper()
	cfg := filepath.Join(tb.TempDir(), "haproxy.cfg")
	err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global
  maxconn 1000
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend in
  bind %s proto h2
  default_backend next
backend next
  server s1 %s proto h2
`, listen, upstream)), 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	return refProxy(tb, pod, listen, exec.Command("haproxy", "-db", "-f", cfg))
}

// refProxy starts a reference proxy's cmd in pod and waits until it listens on listen ("host:port",
// or ":port" for every address). It checks by binding the port, not by connecting, because a
// relay such as socat without fork serves exactly one connection.
func refProxy(tb testing.TB, pod *netns.Pod, listen string, cmd *exec.Cmd) *meshPod {
	tb.Helper()
	mp := startProxyIn(tb, pod, cmd)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var bound bool
		err := pod.NS.Do(func() error {
			ln, err := net.Listen("tcp", listen)
			if err == nil {
				ln.Close()
				return nil
			}
			bound = errors.Is(err, syscall.EADDRINUSE)
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		if bound {
			return mp
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s in %s does not listen on %s:\n%s", cmd.Path, pod.Name, listen, mp.log)
		}
	}
}
