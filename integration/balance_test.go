package integration

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/examples/stockkube/stockpb"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// stockCluster is a node with a client pod and StockData replicas behind a service VIP
// implemented kube-proxy style, for both families.
type stockCluster struct {
	topo     *netns.Topology
	client   *netns.Pod
	replicas []*netns.Pod
	vip4     netip.AddrPort
	vip6     netip.AddrPort
}

func newStockCluster(t *testing.T, replicas int, delays map[int]time.Duration) *stockCluster {
	return newStockClusterWith(t, replicas, func(i int) time.Duration { return delays[i] })
}

// newStockClusterWith gives replica i the service time delay(i).
func newStockClusterWith(t *testing.T, replicas int, delay func(int) time.Duration) *stockCluster {
	t.Helper()
	c := &stockCluster{topo: nstest.Topology(t), vip4: netip.MustParseAddrPort("198.19.0.10:80"), vip6: netip.MustParseAddrPort("[fd00:de71::10]:80")}
	c.client = addPod(t, c.topo, "client")
	var b4, b6 []netip.AddrPort
	for i := range replicas {
		p := addPod(t, c.topo, fmt.Sprintf("stockdata-%d", i))
		serveStockData(t, p, p.Name, delay(i))
		c.replicas = append(c.replicas, p)
		b4 = append(b4, netip.AddrPortFrom(p.IPv4, 8080))
		b6 = append(b6, netip.AddrPortFrom(p.IPv6, 8080))
	}
	if err := c.topo.AddService(c.vip4, b4); err != nil {
		t.Fatal(err)
	}
	if err := c.topo.AddService(c.vip6, b6); err != nil {
		t.Fatal(err)
	}
	return c
}

// mesh puts Detour in every pod; the client's proxy knows the service at both VIPs.
func (c *stockCluster) mesh(t *testing.T, flags ...string) (client *meshPod, replicas []*meshPod) {
	t.Helper()
	disc := writeDiscovery(t, stockDiscovery(c.vip4, c.vip6, c.replicas))
	client = mesh(t, c.client, disc, flags...)
	for _, r := range c.replicas {
		replicas = append(replicas, mesh(t, r, ""))
	}
	return client, replicas
}

func (c *stockCluster) vip(fam family) netip.AddrPort {
	if fam.name == "IPv6" {
		return c.vip6
	}
	return c.vip4
}

// callConcurrently makes n GetQuote calls at once over cc and counts answers per replica.
func callConcurrently(t *testing.T, cc *grpc.ClientConn, n int) map[string]int {
	t.Helper()
	client := stockpb.NewStockDataClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q, err := client.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: stockSymbols[i%len(stockSymbols)]})
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			counts[q.Server]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("GetQuote: %v", err)
	}
	return counts
}

var stockSymbols = []string{"ACME", "BOLT", "CRUX", "DYNA", "EPIC"}

// TestOneClientConnectionReachesEveryReplica is the problem Detour solves: one gRPC client
// connection to a service. Without the mesh, kube-proxy pins it to one replica; with it, every
// replica serves an even share of the calls.
//
// Every replica takes the same 20 ms per call, so the 100 calls really are in flight together:
// with instant replicas on a 2-core machine the first calls finish before the last start, and
// the split then measures the latency-aware balancer's reaction to scheduling noise (which
// TestSlowReplicaGetsFewerRequests covers) instead of per-stream spreading.
func TestOneClientConnectionReachesEveryReplica(t *testing.T) {
	for _, replicas := range []int{2, 3} {
		for _, fam := range families {
			t.Run(fmt.Sprintf("%d replicas/%s", replicas, fam.name), func(t *testing.T) {
				c := newStockClusterWith(t, replicas, func(int) time.Duration { return 20 * time.Millisecond })
				const calls = 100

				baseline := callConcurrently(t, grpcClientIn(t, c.client.NS, c.vip(fam).String()), calls)
				if len(baseline) != 1 {
					t.Fatalf("without the mesh, one connection should pin one replica, got %v", baseline)
				}
				t.Logf("without the mesh: %v", baseline)

				c.mesh(t)
				meshed := callConcurrently(t, grpcClientIn(t, c.client.NS, c.vip(fam).String()), calls)
				t.Logf("with the mesh:    %v", meshed)
				even := float64(calls) / float64(replicas)
				for _, r := range c.replicas {
					got := float64(meshed[r.Name])
					if got < even*0.85 || got > even*1.15 {
						t.Errorf("replica %s served %v of %d calls, want within 15%% of %.1f (all: %v)", r.Name, got, calls, even, meshed)
					}
				}
			})
		}
	}
}

// TestSlowReplicaGetsFewerRequests: P2C over peak-EWMA latency steers calls away from a
// replica that answers slowly.
func TestSlowReplicaGetsFewerRequests(t *testing.T) {
	c := newStockCluster(t, 3, map[int]time.Duration{0: 20 * time.Millisecond})
	c.mesh(t)
	cc := grpcClientIn(t, c.client.NS, c.vip4.String())
	total := map[string]int{}
	for range 6 { // waves of concurrent calls, so latency samples accumulate between them
		for k, v := range callConcurrently(t, cc, 30) {
			total[k] += v
		}
	}
	slow, fast := total[c.replicas[0].Name], min(total[c.replicas[1].Name], total[c.replicas[2].Name])
	t.Logf("calls per replica: %v", total)
	if slow*2 > fast {
		t.Fatalf("the slow replica served %d calls, its fast peers at least %d: want it clearly fewer (under half)", slow, fast)
	}
}

// TestGRPCSemanticsThroughTheMesh: streaming of every kind, metadata and statuses cross both
// proxies intact.
func TestGRPCSemanticsThroughTheMesh(t *testing.T) {
	c := newStockCluster(t, 2, nil)
	c.mesh(t)
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			client := stockpb.NewStockDataClient(grpcClientIn(t, c.client.NS, c.vip(fam).String()))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			t.Run("unary with header and binary trailer metadata", func(t *testing.T) {
				var header, trailer metadata.MD
				q, err := client.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "acme"}, grpc.Header(&header), grpc.Trailer(&trailer))
				if err != nil {
					t.Fatal(err)
				}
				if got := header.Get("x-stock-server"); len(got) != 1 || got[0] != q.Server {
					t.Errorf("header x-stock-server = %v, want [%s]", got, q.Server)
				}
				if got := trailer.Get("x-stock-server-bin"); len(got) != 1 || got[0] != q.Server {
					t.Errorf("trailer x-stock-server-bin = %v, want [%s]", got, q.Server)
				}
			})
			t.Run("a non-OK status and its message", func(t *testing.T) {
				_, err := client.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "NOPE"})
				if status.Code(err) != codes.NotFound || status.Convert(err).Message() != `unknown symbol "NOPE"` {
					t.Fatalf("got %v, want NotFound: unknown symbol \"NOPE\"", err)
				}
			})
			t.Run("server streaming", func(t *testing.T) {
				s, err := client.WatchQuotes(ctx, &stockpb.QuoteRequest{Symbol: "BOLT", Count: 50})
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for {
					_, err := s.Recv()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					n++
				}
				if n != 50 {
					t.Fatalf("%d quotes, want 50", n)
				}
			})
			t.Run("client streaming", func(t *testing.T) {
				s, err := client.RecordTrades(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 40 {
					if err := s.Send(&stockpb.Trade{Symbol: "CRUX", Shares: int32(i)}); err != nil {
						t.Fatal(err)
					}
				}
				sum, err := s.CloseAndRecv()
				if err != nil {
					t.Fatal(err)
				}
				if sum.Trades != 40 || sum.Shares != 780 {
					t.Fatalf("summary %v, want 40 trades of 780 shares", sum)
				}
			})
			t.Run("bidirectional streaming", func(t *testing.T) {
				s, err := client.TradeLive(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 20 {
					if err := s.Send(&stockpb.Trade{Symbol: "DYNA", Shares: 1}); err != nil {
						t.Fatal(err)
					}
					q, err := s.Recv()
					if err != nil || q.Symbol != "DYNA" {
						t.Fatalf("reply %d: %v, %v", i, q, err)
					}
				}
				s.CloseSend()
				if _, err := s.Recv(); err != io.EOF {
					t.Fatalf("after CloseSend: %v, want EOF", err)
				}
			})
			t.Run("a 16 MiB message each way", func(t *testing.T) {
				big := make([]byte, 16<<20)
				for i := range big {
					big[i] = byte(i * 7)
				}
				q, err := client.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "EPIC", Padding: big, ReplyPadding: 16 << 20})
				if err != nil {
					t.Fatal(err)
				}
				if len(q.Padding) != 16<<20 {
					t.Fatalf("reply of %d bytes, want 16 MiB", len(q.Padding))
				}
			})
			t.Run("a deadline expires", func(t *testing.T) {
				slow := stockpb.NewStockDataClient(grpcClientIn(t, c.client.NS, c.vip(fam).String()))
				dctx, dcancel := context.WithTimeout(ctx, 50*time.Millisecond)
				defer dcancel()
				s, err := slow.WatchQuotes(dctx, &stockpb.QuoteRequest{Symbol: "FLUX", Count: 1 << 30})
				if err == nil {
					for err == nil {
						_, err = s.Recv()
					}
				}
				if status.Code(err) != codes.DeadlineExceeded {
					t.Fatalf("got %v, want DeadlineExceeded", err)
				}
			})
		})
	}
}
