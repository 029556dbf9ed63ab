package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/detourmesh/detour/examples/stockkube/stockpb"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// raiseFileLimit lets this process, and the proxies it starts (they inherit it), hold n files,
// or as many as the hard limit allows where raising it is not permitted (no CAP_SYS_RESOURCE);
// it returns the limit in force. The old limit is back when tb ends.
func raiseFileLimit(tb testing.TB, n uint64) uint64 {
	tb.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		tb.Fatal(err)
	}
	want := syscall.Rlimit{Cur: n, Max: max(n, old.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		want = syscall.Rlimit{Cur: old.Max, Max: old.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			tb.Fatalf("raising RLIMIT_NOFILE: %v", err)
		}
		tb.Logf("RLIMIT_NOFILE cannot be raised to %d here (%v): %d", n, err, want.Cur)
	}
	tb.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	return want.Cur
}

// memory is what a process holds: resident set and open files, from /proc, and the Go heap in
// use from the proxy's /metrics.
type memory struct {
	rssKB, files int
	heapInUse    float64
}

func (m *meshPod) memory(tb testing.TB) memory {
	tb.Helper()
	pid := m.proxy.Process.Pid
	var mem memory
	mem.rssKB, _ = procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	mem.files = len(fds)
	_, metrics := m.admin(tb, "/metrics")
	mem.heapInUse = metricValue(metrics, "go_memstats_heap_inuse_bytes")
	return mem
}

// metricValue is the value of the first sample of /metrics text whose line starts with series.
func metricValue(metrics, series string) float64 {
	for line := range strings.Lines(metrics) {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return -1
}

// benchConns is how many idle connections BenchmarkIdleConnections holds: 10000, or
// $DETOUR_BENCH_CONNS.
func benchConns() int {
	if n, err := strconv.Atoi(os.Getenv("DETOUR_BENCH_CONNS")); err == nil && n > 0 {
		return n
	}
	return 10000
}

// BenchmarkIdleConnections measures the real detour binary in a pod holding N (10000) idle
// client connections the app opened: HTTP/2 ones to a service declared http2 (preface and
// SETTINGS exchanged, then silence, like a gRPC channel between calls), and opaque TCP ones to a
// destination outside the mesh (relayed to it, both sides silent). It reports the proxy's
// resident set before and with them, the bytes per connection, its open files and Go heap.
// Run with -benchtime 1x.
func BenchmarkIdleConnections(b *testing.B) {
	nstest.RequireRoot(b)
	limit := int(raiseFileLimit(b, 1<<20))
	for _, kind := range []string{"http2", "opaque"} {
		b.Run(kind, func(b *testing.B) {
			// The proxy holds one file per HTTP/2 connection, as does this process; six per
			// opaque one (client, upstream, and the two pipes splice(2) holds while it waits),
			// and this process two (client and destination).
			n, per := benchConns(), map[string]int{"http2": 1, "opaque": 6}[kind]
			if most := (limit - 1000) / per; n > most {
				b.Logf("%d connections instead of %d: RLIMIT_NOFILE is %d", most, n, limit)
				n = most
			}
			for range b.N {
				topo := nstest.Topology(b)
				client, server := addPod(b, topo, "client"), addPod(b, topo, "server")
				serveStockData(b, server, "server", 0)
				// The opaque destination accepts and holds every connection, silent.
				held := make(chan net.Conn, n)
				for _, ln := range listenAll(b, server, 9000) {
					go func() {
						for {
							c, err := ln.Accept()
							if err != nil {
								return
							}
							held <- c
						}
					}()
				}
				b.Cleanup(func() {
					for range len(held) {
						(<-held).Close()
					}
				})
				vip := netip.MustParseAddrPort("198.19.0.10:80")
				disc := fmt.Sprintf("trustDomain: cluster.local\nservices:\n  - name: stockdata.stocks\n    addresses: [%q]\n    protocol: http2\n    endpoints:\n      - address: %q\n",
					vip.String(), netip.AddrPortFrom(server.IPv4, 8080).String())
				// Above the default the file limit gives (it counts six files a connection).
				m := mesh(b, client, writeDiscovery(b, disc), "--max-connections", strconv.Itoa(n+100))
				dst := netip.AddrPortFrom(server.IPv4, 9000)
				if kind == "http2" {
					dst = vip
					// The pooled upstream connection exists before the baseline: it is not per client.
					if _, err := stockpb.NewStockDataClient(grpcClientIn(b, client.NS, vip.String())).GetQuote(context.Background(), &stockpb.QuoteRequest{Symbol: "ACME"}); err != nil {
						b.Fatal(err)
					}
				}
				before := m.memory(b)
				b.ResetTimer()
				start := time.Now()
				conns := make([]net.Conn, 0, n)
				b.Cleanup(func() {
					for _, c := range conns {
						c.Close()
					}
				})
				for i := range n {
					c, err := client.NS.DialContext(context.Background(), "tcp", dst.String())
					if err != nil {
						b.Fatalf("connection %d: %v", i, err)
					}
					conns = append(conns, c)
					if kind == "http2" {
						if err := h2Hello(c); err != nil {
							b.Fatalf("connection %d: %v", i, err)
						}
					}
				}
				series := fmt.Sprintf(`detour_tcp_open_connections{direction="outbound",protocol=%q}`, kind)
				for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
					_, metrics := m.admin(b, "/metrics")
					if int(metricValue(metrics, series)) >= n {
						break
					}
					if time.Now().After(deadline) {
						b.Fatalf("the proxy holds %v of %d connections", metricValue(metrics, series), n)
					}
				}
				opened := time.Since(start)
				b.StopTimer()
				with := m.memory(b)
				perConn := float64(with.rssKB-before.rssKB) * 1024 / float64(n)
				b.ReportMetric(float64(before.rssKB)/1024, "MB-RSS-before")
				b.ReportMetric(float64(with.rssKB)/1024, "MB-RSS-with")
				b.ReportMetric(perConn, "B-RSS/conn")
				b.ReportMetric((with.heapInUse-before.heapInUse)/float64(n), "B-heap/conn")
				b.ReportMetric(float64(with.files-before.files)/float64(n), "files/conn")
				b.Logf("%d idle %s connections opened in %s: RSS %.1f -> %.1f MB (%.0f B each), heap in use %.1f -> %.1f MB, %d -> %d files",
					n, kind, opened.Round(time.Millisecond), float64(before.rssKB)/1024, float64(with.rssKB)/1024, perConn,
					before.heapInUse/1e6, with.heapInUse/1e6, before.files, with.files)
			}
		})
	}
}

// h2Hello opens an HTTP/2 connection on c as a client does and leaves it idle: preface and
// SETTINGS, the server's SETTINGS read and acknowledged.
func h2Hello(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		return err
	}
	fr := http2.NewFramer(c, bufio.NewReader(c))
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("reading the server's SETTINGS: %w", err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			return fr.WriteSettingsAck()
		}
	}
}

// rolloutAddr is the address of endpoint i of rollout r: 198.18.100.0/22, on the server pod.
func rolloutAddr(r, i int) netip.Addr {
	n := 10*r + i + 1
	return netip.AddrFrom4([4]byte{198, 18, byte(100 + n/250), byte(n % 250)})
}

// addAddresses gives pod the addresses of n rollouts of 10 endpoints, beside its own.
func addAddresses(tb testing.TB, pod *netns.Pod, rollouts int) {
	tb.Helper()
	var batch strings.Builder
	for r := range rollouts {
		for i := range 10 {
			fmt.Fprintf(&batch, "addr add %s/16 dev eth0\n", rolloutAddr(r, i))
		}
	}
	path := tb.TempDir() + "/addrs"
	if err := os.WriteFile(path, []byte(batch.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := pod.NS.Do(func() error { _, err := cmdOut("ip", "-batch", path); return err }); err != nil {
		tb.Fatal(err)
	}
}

// endpointSeries counts the series of /metrics text with an endpoint label, and the distinct
// endpoints they name.
func endpointSeries(metrics string) (series, endpoints int) {
	re := regexp.MustCompile(`endpoint="([^"]*)"`)
	seen := map[string]bool{}
	for line := range strings.Lines(metrics) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if m := re.FindStringSubmatch(line); m != nil {
			series++
			seen[m[1]] = true
		}
	}
	return series, len(seen)
}

// BenchmarkRollouts measures the real detour binary after 50 rollouts of a 10-endpoint HTTP/2
// service: the discovery file rewritten 50 times with 10 new endpoint addresses, 20 gRPC calls
// (2 per endpoint, round robin) after each. It reports the proxy's resident set and the metric
// series with an endpoint label, with the default retention of a gone endpoint's series (10
// minutes, longer than the run) and with --metrics-retain 1s (pruned before the measurement).
// Run with -benchtime 1x.
func BenchmarkRollouts(b *testing.B) {
	nstest.RequireRoot(b)
	const rollouts = 50
	for _, retain := range []string{"", "1s"} {
		name := "retain=" + retain
		if retain == "" {
			name = "retain=default"
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				topo := nstest.Topology(b)
				client, server := addPod(b, topo, "client"), addPod(b, topo, "server")
				addAddresses(b, server, rollouts)
				serveStockData(b, server, "server", 0) // on every address
				vip := netip.MustParseAddrPort("198.19.0.10:80")
				file := func(r int) string {
					var s strings.Builder
					fmt.Fprintf(&s, "trustDomain: cluster.local\nservices:\n  - name: stockdata.stocks\n    addresses: [%q]\n    protocol: http2\n    balancer: round-robin\n    endpoints:\n", vip.String())
					for i := range 10 {
						fmt.Fprintf(&s, "      - address: %q\n", netip.AddrPortFrom(rolloutAddr(r, i), 8080).String())
					}
					return s.String()
				}
				path := writeDiscovery(b, file(0))
				var flags []string
				if retain != "" {
					flags = []string{"--metrics-retain", retain}
				}
				m := mesh(b, client, path, flags...)
				cc := stockpb.NewStockDataClient(grpcClientIn(b, client.NS, vip.String()))
				before := m.memory(b)
				b.ResetTimer()
				for r := range rollouts {
					if r > 0 {
						if err := os.WriteFile(path+".new", []byte(file(r)), 0o644); err != nil {
							b.Fatal(err)
						}
						if err := os.Rename(path+".new", path); err != nil {
							b.Fatal(err)
						}
					}
					want := `"address": "` + netip.AddrPortFrom(rolloutAddr(r, 0), 8080).String() + `"`
					for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
						if _, doc := m.admin(b, "/debug/endpoints"); strings.Contains(doc, want) {
							break
						}
						if time.Now().After(deadline) {
							b.Fatalf("rollout %d never reached the proxy", r)
						}
					}
					for range 20 {
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						_, err := cc.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME"})
						cancel()
						if err != nil {
							b.Fatalf("rollout %d: %v", r, err)
						}
					}
				}
				b.StopTimer()
				_, metrics := m.admin(b, "/metrics")
				series, endpoints := endpointSeries(metrics)
				if retain != "" {
					// Wait for the pruning: every endpoint but the last rollout's is gone.
					for deadline := time.Now().Add(30 * time.Second); endpoints > 10; time.Sleep(100 * time.Millisecond) {
						if time.Now().After(deadline) {
							b.Fatalf("%d endpoints still have series %s after the last rollout", endpoints, retain)
						}
						_, metrics = m.admin(b, "/metrics")
						series, endpoints = endpointSeries(metrics)
					}
				}
				after := m.memory(b)
				b.ReportMetric(float64(before.rssKB)/1024, "MB-RSS-before")
				b.ReportMetric(float64(after.rssKB)/1024, "MB-RSS-after")
				b.ReportMetric(float64(series), "series")
				b.ReportMetric(float64(endpoints), "endpoints")
				b.ReportMetric(float64(len(metrics)), "B-metrics")
				b.Logf("%d rollouts of 10 endpoints: RSS %.1f -> %.1f MB, heap in use %.1f -> %.1f MB, %d series naming %d endpoints, /metrics %d bytes, %d files",
					rollouts, float64(before.rssKB)/1024, float64(after.rssKB)/1024, before.heapInUse/1e6, after.heapInUse/1e6,
					series, endpoints, len(metrics), after.files)
			}
		})
	}
}
