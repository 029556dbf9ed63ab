package h2

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// TestWarmConnectsBeforeTheFirstStream: Warm dials the endpoint once, and the first stream
// then reuses that connection instead of dialling.
func TestWarmConnectsBeforeTheFirstStream(t *testing.T) {
	ts := startGRPCServer(t, "warm")
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ts.addr)})
	srv.Warm(ts.addr)
	srv.Warm(ts.addr) // already dialling or connected: no second connection
	deadline := time.Now().Add(5 * time.Second)
	for ts.conns.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Warm did not connect to the endpoint")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cc := dialGRPC(t, addr)
	req := []byte("hello")
	var resp []byte
	if err := cc.Invoke(context.Background(), "/detour.test.Echo/Unary", &req, &resp); err != nil {
		t.Fatal(err)
	}
	if n := ts.conns.Load(); n != 1 {
		t.Fatalf("the endpoint accepted %d connections, want the one Warm opened", n)
	}
}

// TestRetireMovesLaterStreamsToANewConnection: after Retire, the next stream is not sent over
// the connection dialled before it, and the old connection is closed once idle.
func TestRetireMovesLaterStreamsToANewConnection(t *testing.T) {
	ts := startGRPCServer(t, "retire")
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ts.addr)})
	cc := dialGRPC(t, addr)
	req := []byte("hello")
	var resp []byte
	for i := range 2 {
		if i == 1 {
			srv.Retire(ts.addr)
		}
		if err := cc.Invoke(context.Background(), "/detour.test.Echo/Unary", &req, &resp); err != nil {
			t.Fatal(err)
		}
		if n := ts.conns.Load(); n != int64(i+1) {
			t.Fatalf("after call %d the endpoint accepted %d connections, want %d", i+1, n, i+1)
		}
	}
	srv.Retire(netip.MustParseAddrPort("127.0.0.1:1")) // no pool: nothing to do
	waitFor(t, "the retired connection to close", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.ups) == 1
	})
}

// TestRetireDuringADialDialsAgain: a connection whose dial began before Retire serves no
// stream; the stream waiting for it gets a connection dialled afterwards.
func TestRetireDuringADialDialsAgain(t *testing.T) {
	ts := startGRPCServer(t, "retire-dial")
	dialing, release := make(chan struct{}, 2), make(chan struct{})
	var dials atomic.Int32
	dial := func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		if dials.Add(1) == 1 {
			dialing <- struct{}{}
			<-release // held until the test has retired the endpoint
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr.String())
	}
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ts.addr), Dial: dial})
	cc := dialGRPC(t, addr)
	done := make(chan error, 1)
	go func() {
		req := []byte("hello")
		var resp []byte
		done <- cc.Invoke(context.Background(), "/detour.test.Echo/Unary", &req, &resp)
	}()
	<-dialing
	srv.Retire(ts.addr)
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2: the one that spanned Retire, and one after it", n)
	}
	waitFor(t, "the stale connection to close", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.ups) == 1
	})
}

// TestRetireServesStreamsWaitingForASlot: streams queued for a slot on a connection that Retire
// drains get a new connection instead of waiting for ever.
func TestRetireServesStreamsWaitingForASlot(t *testing.T) {
	ts := startGRPCServer(t, "retire-waiters", grpc.MaxConcurrentStreams(1))
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ts.addr), MaxConnsPerEndpoint: 1})
	cc := dialGRPC(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hold, err := cc.NewStream(ctx, &echoDesc.Streams[0], "/detour.test.Echo/Wait") // takes the one slot
	if err != nil {
		t.Fatal(err)
	}
	hold.SendMsg(&[]byte{})
	waitFor(t, "the held stream to reach the server", func() bool { return ts.calls.Load() == 1 })
	p := srv.pool(ts.addr)
	waitFor(t, "the server's stream limit to reach the proxy", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.conns) == 1 && p.conns[0].maxStreams == 1
	})
	done := make(chan error, 1)
	go func() {
		req := []byte("hello")
		var resp []byte
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- cc.Invoke(ctx, "/detour.test.Echo/Unary", &req, &resp)
	}()
	waitFor(t, "the call to queue for a slot", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.waiters) == 1
	})
	srv.Retire(ts.addr)
	if err := <-done; err != nil {
		t.Fatalf("a call queued when its endpoint was retired: %v", err)
	}
	if n := ts.conns.Load(); n != 2 {
		t.Fatalf("the endpoint accepted %d connections, want 2", n)
	}
}
