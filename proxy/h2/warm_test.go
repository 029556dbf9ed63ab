package h2

import (
	"context"
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
