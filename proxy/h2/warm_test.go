package h2

import (
	"context"
	"net/netip"
	"testing"
	"time"
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
