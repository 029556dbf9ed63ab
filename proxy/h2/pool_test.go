package h2

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// TestSweepNeverOrphansAPoolInUse races the janitor's sweep of empty pools against streams
// opening on them (B.8a): a stream that fetched its endpoint's pool just before the sweep deleted
// it must not dial from that orphan, where Retire cannot see it and a second pool for the same
// address could exceed MaxConnsPerEndpoint. Every dial checks that its pool is the one the
// server knows for the address. Run it with -race.
func TestSweepNeverOrphansAPoolInUse(t *testing.T) {
	ep := netip.MustParseAddrPort("127.0.0.1:1")
	var srv *Server
	var dials, orphans atomic.Int64
	dial := func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		dials.Add(1)
		srv.mu.Lock()
		p := srv.pools[addr]
		srv.mu.Unlock()
		known := false
		if p != nil {
			p.mu.Lock()
			known = p.dialing > 0
			p.mu.Unlock()
		}
		if !known {
			orphans.Add(1)
		}
		return nil, errors.New("test: no dial") // the waiting stream fails, and the pool is empty again
	}
	addr, s, _ := startProxy(t, Config{Router: newRecorder(ep), Dial: dial, MaxConnsPerEndpoint: 1, Logger: discardLogger()})
	srv = s
	stop, swept := make(chan struct{}), make(chan struct{})
	go func() { // the janitor's sweep, as often as it can run
		defer close(swept)
		for {
			select {
			case <-stop:
				return
			default:
				srv.sweep()
			}
		}
	}()
	const clients, streams = 8, 1000
	var wg sync.WaitGroup
	for range clients {
		rc := dialRaw(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range streams {
				id := uint32(2*i + 1)
				rc.headers(id, true, reqHeaders()...)
				rc.until("the failed dial's answer", isHeaders(id))
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-swept
	t.Logf("%d streams, %d dials", clients*streams, dials.Load())
	if n := orphans.Load(); n > 0 {
		t.Fatalf("%d of %d dials came from a pool the server had already swept", n, dials.Load())
	}
}

// TestFailedWriteConnectionIsNotPickedAgain: a pooled connection whose write has failed, before
// its read loop has noticed and torn it down, takes no stream: the stream gets a new connection
// (B.8b; before the fix, upConn.start gave the slot back and the pool picked the same connection
// again, recursing until the read loop caught up, or for ever).
func TestFailedWriteConnectionIsNotPickedAgain(t *testing.T) {
	ts := startGRPCServer(t, "a")
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ts.addr), MaxConnsPerEndpoint: 1, Logger: discardLogger()})
	cc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatal(err)
	}
	p := srv.pool(ts.addr)
	p.mu.Lock()
	u := p.conns[0]
	p.mu.Unlock()
	u.wmu.Lock()
	u.werr = errors.New("test: a write to the upstream failed") // its read loop still runs
	u.wmu.Unlock()
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatalf("a call after the pooled connection's write failed: %v", err)
	}
	if n := ts.conns.Load(); n != 2 {
		t.Fatalf("the upstream accepted %d connections, want a second one for the call", n)
	}
}
