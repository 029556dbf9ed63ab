package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
	"github.com/detourmesh/detour/proxy/resolve"
	"github.com/detourmesh/detour/spiffe"
)

// scaleService is the name of the i-th service of the benchmark's mesh.
func scaleService(i int) string { return fmt.Sprintf("s%04d.bench", i) }

func scaleVIP(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(1 + i/250), byte(1 + i%250)}), 80)
}

// scaleMesh is a discovery file of n services with per endpoints each, opaque TCP. The first
// five, the ones the real proxies use, have their endpoints on echo servers at real:9000...;
// the others at addresses nobody serves, with identities. extra adds endpoints to a service.
func scaleMesh(n, per int, real netip.Addr, extra map[int][]string) string {
	var b strings.Builder
	b.Grow(n * per * 110)
	b.WriteString("trustDomain: cluster.local\nservices:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - name: %s\n    addresses: [%q, \"%s:80\"]\n    protocol: opaque\n    endpoints:\n",
			scaleService(i), scaleVIP(i).String(), scaleService(i))
		for j := range per {
			if i < 5 {
				fmt.Fprintf(&b, "      - address: %q\n", netip.AddrPortFrom(real, uint16(9000+j)).String())
				continue
			}
			fmt.Fprintf(&b, "      - address: 198.18.%d.%d:%d\n        identity: spiffe://cluster.local/ns/bench/sa/s%04d\n        zone: zone-%d\n",
				100+i/250, 1+i%250, 8080+j, i, j%3)
		}
		for _, e := range extra[i] {
			fmt.Fprintf(&b, "      - address: %q\n", e)
		}
	}
	return b.String()
}

// replaceAtomically rewrites path as a ConfigMap update does: a new file renamed over it.
func replaceAtomically(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path+".new", []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		tb.Fatal(err)
	}
}

// startMeshed installs the redirect in pod and starts its proxy with args, returning it once
// ready and how long it took from the process's start to /ready.
func startMeshed(tb testing.TB, pod *netns.Pod, args ...string) (*meshPod, time.Duration) {
	tb.Helper()
	mustDetour(tb, pod.NS, "init")
	cmd := exec.Command(detourBin, append([]string{"proxy", "--log-level", "warn", "--drain-timeout", "200ms"}, args...)...)
	netns.AsUID(cmd, proxyUID, proxyUID)
	start := time.Now()
	mp := startProxyIn(tb, pod, cmd)
	mp.waitReady(tb)
	return mp, time.Since(start)
}

// useServices opens one relayed connection from pod to each VIP and checks it echoes: the
// proxy subscribes to each service on the way.
func useServices(tb testing.TB, pod *netns.Pod, vips ...netip.AddrPort) {
	tb.Helper()
	for _, vip := range vips {
		c := dial(tb, pod.NS, vip)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			tb.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
			tb.Fatalf("through %s: %q, %v", vip, got, err)
		}
		c.Close()
	}
}

func rssKB(pid int) (current, peak int) {
	current, _ = procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	peak, _ = procField(fmt.Sprintf("/proc/%d/status", pid), "VmHWM:")
	return current, peak
}

// byteCounter is a gRPC stats handler that counts the bytes a client receives on the wire.
type byteCounter struct{ in atomic.Int64 }

func (c *byteCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (c *byteCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (c *byteCounter) HandleConn(context.Context, stats.ConnStats)                       {}
func (c *byteCounter) HandleRPC(_ context.Context, s stats.RPCStats) {
	if p, ok := s.(*stats.InPayload); ok {
		c.in.Add(int64(p.WireLength))
	}
}

// watcher is one in-process proxy's discovery client.
type watcher struct {
	src   *resolve.Controller
	bytes *byteCounter
	uses  []string
}

// changeTime parses the time of the last "discovery change" line of a controller's log, with
// the millisecond precision slog writes, and how long computing the change took.
func changeTime(log string) (last time.Time, took time.Duration, found bool) {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="discovery change"`) {
			continue
		}
		f, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		if t, err := time.Parse(time.RFC3339, f); err == nil {
			last, found = t, true
		}
		if _, after, ok := strings.Cut(line, " took="); ok {
			took, _ = time.ParseDuration(strings.Fields(after)[0])
		}
	}
	return last, took, found
}

// BenchmarkDiscoveryScale: a mesh of 2,000 services and 20,000 endpoints served by the real
// controller to 100 proxies, each using 5 services: 99 in-process discovery clients
// (proxy/resolve, as a proxy runs it) and one real detour proxy in a pod, whose RSS is compared
// with the same proxy on a mesh of only its 5 services, in the same run, and with a proxy
// holding the whole mesh from a discovery file. Reports the controller's RSS and CPU, the bytes
// one endpoint change costs (received by the clients, on the wire) and the time from the
// controller taking the change (its log line, millisecond precision) to the last affected
// client holding it. Run it with -benchtime 1x.
func BenchmarkDiscoveryScale(b *testing.B) {
	nstest.RequireRoot(b)
	const services, perService, watchers = 2000, 10, 99
	topo := nstest.Topology(b)
	ca := newMeshCA(b, topo, 24*time.Hour)
	server := addPod(b, topo, "echo")
	for port := uint16(9000); port <= 9010; port++ {
		serveTCP(b, server, port, echo)
	}
	clientsPod := addPod(b, topo, "watchers")
	smallPod, bigPod, filePod := addPod(b, topo, "proxy-small"), addPod(b, topo, "proxy-big"), addPod(b, topo, "proxy-file")
	five := []netip.AddrPort{scaleVIP(0), scaleVIP(1), scaleVIP(2), scaleVIP(3), scaleVIP(4)}

	smallFlags := ca.meshFlags(b, spiffeID("bench", "small"))
	bigFlags := ca.meshFlags(b, spiffeID("bench", "big"))
	tokens := make([]string, watchers)
	for i := range tokens {
		tokens[i] = ca.token(b, spiffeID("bench", fmt.Sprintf("w%d", i)))
	}
	bigYAML := scaleMesh(services, perService, server.IPv4, nil)

	// The small mesh: the proxy's five services only.
	ca.start(b, scaleMesh(5, perService, server.IPv4, nil))
	small, smallReady := startMeshed(b, smallPod, smallFlags...)
	useServices(b, smallPod, five...)
	smallRSS, smallPeak := rssKB(small.proxy.Process.Pid)
	smallHeap := goHeap(b, small)
	small.proxy.Process.Kill()
	small.exited <- <-small.exited

	// The whole mesh, from the controller, once it serves (its start is not the proxy's).
	ca.stop(b)
	ca.start(b, bigYAML)
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(ca.ctrlLog.String(), "controller serving"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("the controller did not start:\n%s", ca.ctrlLog)
		}
	}
	big, bigReady := startMeshed(b, bigPod, bigFlags...)
	useServices(b, bigPod, five...)
	bigRSS, bigPeak := rssKB(big.proxy.Process.Pid)
	bigHeap := goHeap(b, big)

	// The whole mesh from a file, as every proxy held it before.
	file, fileReady := startMeshed(b, filePod, "--discovery", "file:"+writeDiscovery(b, bigYAML))
	useServices(b, filePod, five...)
	fileRSS, filePeak := rssKB(file.proxy.Process.Pid)
	file.proxy.Process.Kill()
	file.exited <- <-file.exited

	// 99 more proxies' discovery clients, each using s0000 and four services of its own.
	anchors, err := spiffe.LoadTrustAnchors(ca.anchor)
	if err != nil {
		b.Fatal(err)
	}
	spiffeTD, err := spiffe.TrustDomainOf(anchors[0])
	if err != nil {
		b.Fatal(err)
	}
	ws := make([]*watcher, watchers)
	ctx, cancel := context.WithCancel(context.Background())
	var started []*resolve.Controller
	b.Cleanup(func() {
		cancel()
		for _, s := range started {
			<-s.Done()
		}
	})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctrlPid := ca.ctrl.Process.Pid
	cpuBefore := usage(ctrlPid).cpu
	var wg sync.WaitGroup
	var startErr atomic.Value
	var mu sync.Mutex
	for i := range ws {
		w := &watcher{bytes: &byteCounter{}, uses: []string{scaleService(0)}}
		for j := range 4 {
			w.uses = append(w.uses, scaleService(5+4*i+j))
		}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			src, err := resolve.StartController(ctx, resolve.ControllerOptions{
				Address: ca.addr(), TLS: spiffe.ClientTLS(spiffe.Pool(anchors), spiffe.ControllerID(spiffeTD), nil),
				Identity: spiffeID("bench", fmt.Sprintf("w%d", i)), TokenFile: tokens[i], Logger: quiet,
				DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
					return clientsPod.NS.DialContext(ctx, "tcp", addr)
				}), grpc.WithStatsHandler(w.bytes)},
			})
			if err != nil {
				startErr.Store(err)
				return
			}
			mu.Lock()
			started = append(started, src)
			mu.Unlock()
			w.src = src
			for _, name := range w.uses {
				src.Use(name) // held for the whole run
			}
		}()
	}
	wg.Wait()
	if err, _ := startErr.Load().(error); err != nil {
		b.Fatal(err)
	}
	resolved := func(w *watcher, name string, n int) bool {
		svc, ok := w.src.Snapshot().Service(name)
		return ok && !svc.Unresolved && len(svc.Endpoints) == n
	}
	waitAll := func(what string, ok func(w *watcher) bool) {
		b.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			done := 0
			for _, w := range ws {
				if ok(w) {
					done++
				}
			}
			if done == len(ws) {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: %d of %d clients", what, done, len(ws))
			}
		}
	}
	waitAll("every client resolves its five services", func(w *watcher) bool {
		for _, name := range w.uses {
			if !resolved(w, name, perService) {
				return false
			}
		}
		return true
	})
	var startBytes int64
	for _, w := range ws {
		startBytes += w.bytes.in.Load()
	}
	cpuConnect := usage(ctrlPid).cpu - cpuBefore
	ctrlRSS, ctrlPeak := rssKB(ctrlPid)

	// change adds an endpoint to service i, which the clients in affected use, and returns the
	// bytes all clients received for it and when each affected one (and the real proxy, when it
	// uses the service) held it, from the controller's log line for the change.
	extras := map[int][]string{}
	change := func(i int, extra string, affected []*watcher, real *meshPod) (bytes int64, worst, realAt, cpu, took time.Duration) {
		b.Helper()
		var before int64
		for _, w := range ws {
			before += w.bytes.in.Load()
		}
		logBefore := ca.ctrlLog.String()
		cpu0 := usage(ctrlPid).cpu
		got := make([]time.Time, len(affected))
		var cwg sync.WaitGroup
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		defer wcancel()
		for k, w := range affected {
			ch := w.src.Watch(wctx)
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				for s := range ch {
					if svc, ok := s.Service(scaleService(i)); ok && len(svc.Endpoints) == perService+1 {
						got[k] = time.Now()
						return
					}
				}
			}()
		}
		extras[i] = append(extras[i], extra)
		replaceAtomically(b, ca.disc, scaleMesh(services, perService, server.IPv4, extras))
		var realGot time.Time
		if real != nil {
			for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(2 * time.Millisecond) {
				if len(endpointsDoc(b, real, "").endpointsOf(scaleService(i))) == perService+1 {
					realGot = time.Now()
					break
				}
				if time.Now().After(deadline) {
					b.Fatal("the real proxy never got the change")
				}
			}
		}
		cwg.Wait()
		for k, t := range got {
			if t.IsZero() {
				b.Fatalf("client %d never got the change", k)
			}
		}
		var t0 time.Time
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if tt, d, ok := changeTime(strings.TrimPrefix(ca.ctrlLog.String(), logBefore)); ok {
				t0, took = tt, d
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("the controller did not log the change")
			}
		}
		for _, t := range got {
			worst = max(worst, t.Sub(t0))
		}
		if real != nil {
			realAt = realGot.Sub(t0)
		}
		var after int64
		for _, w := range ws {
			after += w.bytes.in.Load()
		}
		return after - before, worst, realAt, usage(ctrlPid).cpu - cpu0, took
	}
	popBytes, popWorst, popReal, popCPU, popTook := change(0, netip.AddrPortFrom(server.IPv4, 9010).String(), ws, big)
	oneBytes, oneWorst, _, oneCPU, oneTook := change(5, "198.18.250.1:8080", ws[:1], nil)
	ctrlRSSAfter, _ := rssKB(ctrlPid)

	b.ReportMetric(float64(bigRSS)/1024, "proxy-RSS-MB")
	b.ReportMetric(float64(smallRSS)/1024, "small-mesh-proxy-RSS-MB")
	b.ReportMetric(float64(fileRSS)/1024, "file-proxy-RSS-MB")
	b.ReportMetric(ms(bigReady), "proxy-ready-ms")
	b.ReportMetric(float64(ctrlRSSAfter)/1024, "controller-RSS-MB")
	b.ReportMetric(float64(popBytes)/float64(len(ws)), "bytes/change/client")
	b.ReportMetric(ms(popWorst), "change-to-all-ms")
	b.Logf("proxy (5 services used): RSS %.1f MB (peak %.1f) with 2,000 services / 20,000 endpoints from the controller; "+
		"%.1f MB (peak %.1f) with its 5 services only: +%.2f MB; ready in %s vs %s",
		float64(bigRSS)/1024, float64(bigPeak)/1024, float64(smallRSS)/1024, float64(smallPeak)/1024,
		float64(bigRSS-smallRSS)/1024, bigReady.Round(time.Millisecond), smallReady.Round(time.Millisecond))
	b.Logf("Go heap of the proxy: %s; with the small mesh: %s", bigHeap, smallHeap)
	b.Logf("the same proxy with the whole mesh from a file: RSS %.1f MB (peak %.1f), ready in %s",
		float64(fileRSS)/1024, float64(filePeak)/1024, fileReady.Round(time.Millisecond))
	b.Logf("controller: RSS %.1f MB (peak %.1f) after 100 streams, %.1f MB after the changes; CPU %s for 99 streams to connect and resolve",
		float64(ctrlRSS)/1024, float64(ctrlPeak)/1024, float64(ctrlRSSAfter)/1024, cpuConnect.Round(time.Millisecond))
	b.Logf("first sync: %d bytes per client (the table of 2,000 services and 5 endpoint sets)", startBytes/int64(len(ws)))
	b.Logf("an endpoint added to the service all 100 proxies use: %d bytes to the 99 clients (%d each), last client %s and the real proxy %s after the controller took it; "+
		"controller CPU %s, of which the delta %s (the rest: reading and parsing the 2 MB file)",
		popBytes, popBytes/int64(len(ws)), popWorst.Round(time.Microsecond), popReal.Round(time.Millisecond), popCPU.Round(time.Millisecond), popTook)
	b.Logf("an endpoint added to a service one proxy uses: %d bytes in all, that client %s after the controller took it; controller CPU %s, of which the delta %s",
		oneBytes, oneWorst.Round(time.Microsecond), oneCPU.Round(time.Millisecond), oneTook)
}

// goHeap is a proxy's Go heap from its /metrics: in use, and idle but not returned to the OS.
func goHeap(tb testing.TB, m *meshPod) string {
	_, body := m.admin(tb, "/metrics")
	v := map[string]float64{}
	for _, l := range strings.Split(body, "\n") {
		if name, val, ok := strings.Cut(l, " "); ok && strings.HasPrefix(name, "go_memstats_heap_") {
			var f float64
			fmt.Sscanf(val, "%g", &f)
			v[name] = f
		}
	}
	return fmt.Sprintf("%.2f MB in use, %.2f MB idle and kept", v["go_memstats_heap_inuse_bytes"]/(1<<20),
		(v["go_memstats_heap_idle_bytes"]-v["go_memstats_heap_released_bytes"])/(1<<20))
}
