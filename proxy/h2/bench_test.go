package h2

import (
	"context"
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
				addr, _, _ = startProxy(b, Config{Router: newRecorder(addr), Logger: discardLogger()})
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
