package h2

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

// TestSilentUpstreamFailsItsStreamsAsADialFailure: an upstream that accepts the connection but
// never sends its SETTINGS (no HTTP/2 server behind the port) gets no stream: after DialTimeout
// the streams waiting for it fail as a dial failure, UNAVAILABLE and blamed on the upstream, and
// none was sent to it, so a client may safely retry elsewhere (B.8c; before the fix the stream
// was sent at once and waited for the keepalive, about a minute).
func TestSilentUpstreamFailsItsStreamsAsADialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var headers atomic.Int64
	accepted := make(chan net.Conn, 1)
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		select {
		case c := <-accepted:
			c.Close()
		default:
		}
		<-done
	})
	go func() { // reads the engine's frames, answers nothing
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		accepted <- c
		if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
		fr := http2.NewFramer(nil, c)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.(*http2.HeadersFrame); ok {
				headers.Add(1)
			}
		}
	}()
	silent := netip.MustParseAddrPort(ln.Addr().String())
	rec := newRecorder(silent)
	addr, _, _ := startProxy(t, Config{Router: rec, DialTimeout: 300 * time.Millisecond, Logger: discardLogger()})
	cc := dialGRPC(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in, out := []byte("x"), []byte(nil)
	err = cc.Invoke(ctx, mUnary, &in, &out)
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "SETTINGS") {
		t.Fatalf("a call to an upstream that never speaks HTTP/2: %v; want UNAVAILABLE saying it sent no SETTINGS", err)
	}
	if res := rec.waitResult(t); !res.Upstream {
		t.Errorf("Result = %+v, want the failure blamed on the upstream", res)
	}
	if n := headers.Load(); n != 0 {
		t.Errorf("the silent upstream received %d HEADERS; want none: the stream was not safe to retry", n)
	}
}
