package h2

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// BenchmarkUnary1KiB runs grpc-go unary calls with 1 KiB messages, 16 in flight over one client
// connection: direct, through one engine, and through two engines in a chain (the mesh path:
// client -> outbound engine -> inbound engine -> server). Everything runs in this process, so
// allocs/op and cpu-ns/op include the grpc client and server; subtract "direct" to get the
// engine's share.
func BenchmarkUnary1KiB(b *testing.B) {
	for _, hops := range []int{0, 1, 2} {
		name := []string{"direct", "one-engine", "two-engines"}[hops]
		b.Run(name, func(b *testing.B) {
			ts := startGRPCServer(b, "a")
			addr := ts.addr
			for i := 0; i < hops; i++ {
				addr, _, _ = startProxy(b, Config{Router: fixedRouter(addr), Logger: discardLogger()})
			}
			cc := dialGRPC(b, addr)
			runUnary(b, cc, 16)
		})
	}
}

func runUnary(b *testing.B, cc *grpc.ClientConn, inFlight int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	in := make([]byte, 1024)
	for i := 0; i < 100; i++ { // warm up: connections, HPACK tables, pools
		var out []byte
		if err := cc.Invoke(ctx, mUnary, &in, &out); err != nil {
			b.Fatal(err)
		}
	}
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	var ru0, ru1 syscall.Rusage
	b.ReportAllocs()
	b.ResetTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	for g := 0; g < inFlight; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out []byte
			for left.Add(-1) >= 0 {
				if err := cc.Invoke(ctx, mUnary, &in, &out); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	b.StopTimer()
	cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) - syscall.TimevalToNsec(ru0.Utime) +
		syscall.TimevalToNsec(ru1.Stime) - syscall.TimevalToNsec(ru0.Stime))
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// fixedRouter sends everything to addr, with a Done callback as cheap as a balancer's.
func fixedRouter(addr netip.AddrPort) Router {
	var inflight atomic.Int64
	done := func(Result) { inflight.Add(-1) }
	return RouterFunc(func(netip.AddrPort, *Head) (Route, error) {
		inflight.Add(1)
		return Route{Addr: addr, Done: done}, nil
	})
}

// BenchmarkLatencyAt1000rps paces unary 1 KiB calls at 1000 per second over one connection
// (up to 16 in flight) for 3 s, direct and through two engines, and reports p50/p99 latency and
// the process CPU per 1000 calls (client and server included: subtract "direct"). Run it with
// -benchtime 1x: each iteration is the whole 3 s run.
func BenchmarkLatencyAt1000rps(b *testing.B) {
	for _, hops := range []int{0, 1, 2} {
		name := []string{"direct", "one-engine", "two-engines"}[hops]
		b.Run(name, func(b *testing.B) {
			ts := startGRPCServer(b, "a")
			addr := ts.addr
			for i := 0; i < hops; i++ {
				addr, _, _ = startProxy(b, Config{Router: fixedRouter(addr), Logger: discardLogger()})
			}
			cc := dialGRPC(b, addr)
			for i := 0; i < b.N; i++ {
				pacedRun(b, cc, 1000, 3*time.Second)
			}
		})
	}
}

func pacedRun(b *testing.B, cc *grpc.ClientConn, rps int, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	in := make([]byte, 1024)
	for i := 0; i < 200; i++ {
		var out []byte
		if err := cc.Invoke(ctx, mUnary, &in, &out); err != nil {
			b.Fatal(err)
		}
	}
	n := int(d.Seconds() * float64(rps))
	lat := make([]time.Duration, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	interval := time.Second / time.Duration(rps)
	for i := 0; i < n; i++ {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			var out []byte
			t0 := time.Now()
			if err := cc.Invoke(ctx, mUnary, &in, &out); err != nil {
				b.Error(err)
			}
			lat[i] = time.Since(t0)
		}(i)
	}
	wg.Wait()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) - syscall.TimevalToNsec(ru0.Utime) +
		syscall.TimevalToNsec(ru1.Stime) - syscall.TimevalToNsec(ru0.Stime))
	slices.Sort(lat)
	b.ReportMetric(float64(lat[n/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[n*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(cpu.Seconds()*1000/float64(n), "cpu-s/1000req")
}

// BenchmarkStreamData measures the DATA path: one bidirectional stream, each op sends a 64 KiB
// message and reads it back (4 DATA frames each way per hop). allocs/op above "direct" are
// the engine's per-message cost on a stream that is already open.
func BenchmarkStreamData(b *testing.B) {
	for _, hops := range []int{0, 1} {
		name := []string{"direct", "one-engine"}[hops]
		b.Run(name, func(b *testing.B) {
			ts := startGRPCServer(b, "a")
			addr := ts.addr
			for i := 0; i < hops; i++ {
				addr, _, _ = startProxy(b, Config{Router: fixedRouter(addr), Logger: discardLogger()})
			}
			cc := dialGRPC(b, addr)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			st, err := cc.NewStream(ctx, descBidi, mBidi)
			if err != nil {
				b.Fatal(err)
			}
			msg := make([]byte, 64<<10)
			var back []byte
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := st.SendMsg(&msg); err != nil {
					b.Fatal(err)
				}
				if err := st.RecvMsg(&back); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			st.CloseSend()
		})
	}
}
