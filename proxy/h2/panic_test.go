package h2

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const mPanic = "/detour.test.Echo/Panic"

// panics collects what Config.OnPanic reports.
func panics() (chan Panic, func(Panic)) {
	ch := make(chan Panic, 16)
	return ch, func(p Panic) { ch <- p }
}

func wantPanic(t *testing.T, ch <-chan Panic, where, value, frame string) {
	t.Helper()
	select {
	case p := <-ch:
		if p.Where != where || !strings.Contains(string(p.Stack), frame) || !strings.Contains(toString(p.Value), value) {
			t.Fatalf("OnPanic got %q %v with stack\n%s\nwant %q, %q, a stack through %s", p.Where, p.Value, p.Stack, where, value, frame)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("OnPanic was not called for a panic in the %s", where)
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	if e, ok := v.(error); ok {
		return e.Error()
	}
	return ""
}

// TestPanicInTheClientReadLoopEndsOnlyItsConnection: a Router that panics for one path (it runs
// on the client connection's read loop) closes that connection and fails its other streams,
// upstream calls included; other client connections, their open streams included, go on.
func TestPanicInTheClientReadLoopEndsOnlyItsConnection(t *testing.T) {
	ts := startGRPCServer(t, "a")
	rec := newRecorder(ts.addr)
	router := RouterFunc(func(dst netip.AddrPort, h *Head) (Route, error) {
		if h.Path == mPanic {
			panic("router bug for " + h.Path)
		}
		return rec.Route(dst, h)
	})
	got, onPanic := panics()
	addr, srv, _ := startProxy(t, Config{Router: router, Logger: discardLogger(), OnPanic: onPanic})

	// Another client with a stream open across the panic.
	other := dialGRPC(t, addr)
	bidi, err := other.NewStream(ctxT(t), descBidi, mBidi)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("before")
	if err := bidi.SendMsg(&msg); err != nil {
		t.Fatal(err)
	}
	var back []byte
	if err := bidi.RecvMsg(&back); err != nil {
		t.Fatal(err)
	}

	c := dialConf(t, addr)
	c.headers(1, true, grpcReq(mWait)...)
	select {
	case <-ts.hadDeadline: // the Wait call reached the server
	case <-time.After(10 * time.Second):
		t.Fatal("the Wait call did not reach the server")
	}
	c.headers(3, true, grpcReq(mPanic)...)
	c.wantClosed()
	wantPanic(t, got, "client connection", "router bug for "+mPanic, "TestPanicInTheClientReadLoopEndsOnlyItsConnection")

	// The panicking connection's other stream was failed, and its upstream call cancelled.
	select {
	case err := <-ts.waitErr:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the Wait call ended with %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream call of the panicking connection's stream was not cancelled")
	}
	if res := rec.waitResult(t); res.Err == nil {
		t.Errorf("Result of the failed stream = %+v, want an error", res)
	}
	// The other connection and its open stream work.
	msg = []byte("after")
	if err := bidi.SendMsg(&msg); err != nil {
		t.Fatalf("the other client's open stream after the panic: %v", err)
	}
	if err := bidi.RecvMsg(&back); err != nil || string(back) != "after" {
		t.Fatalf("the other client's open stream after the panic: %q, %v", back, err)
	}
	in, out := []byte("x"), []byte(nil)
	if err := other.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatalf("a new call on the other connection: %v", err)
	}
	if n := bufferedStreams(srv); n != 1 {
		t.Errorf("%d streams left in the engine, want the other client's one", n)
	}
}

// TestPanicInTheUpstreamReadLoopEndsOnlyThatConnection: a Route.Done that panics (it runs on
// the upstream read loop that ends the stream) closes that upstream connection and fails its
// streams; the next call dials a new one.
func TestPanicInTheUpstreamReadLoopEndsOnlyThatConnection(t *testing.T) {
	ts := startGRPCServer(t, "a")
	rec := newRecorder(ts.addr)
	router := RouterFunc(func(dst netip.AddrPort, h *Head) (Route, error) {
		r, err := rec.Route(dst, h)
		if h.Get("x-panic") != "" {
			r.Done = func(Result) { panic("Done bug") }
		}
		return r, err
	})
	got, onPanic := panics()
	addr, _, _ := startProxy(t, Config{Router: router, Logger: discardLogger(), OnPanic: onPanic})
	c := dialConf(t, addr)
	c.headers(1, true, grpcReq(mWait)...) // shares the upstream connection
	select {
	case <-ts.hadDeadline:
	case <-time.After(10 * time.Second):
		t.Fatal("the Wait call did not reach the server")
	}
	c.headers(3, true, grpcReq(mUnary, "x-panic", "1")...)
	wantPanic(t, got, "upstream connection", "Done bug", "TestPanicInTheUpstreamReadLoopEndsOnlyThatConnection")
	// The stream that shared the upstream connection fails; the client connection stays.
	deadline := time.Now().Add(confWait)
	for {
		f, err := c.read(deadline)
		if err != nil {
			t.Fatalf("want stream 1 failed: %v", err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == 1 {
			if fieldValue(h, "grpc-status") != "14" {
				t.Fatalf("stream 1 ended with %v, want UNAVAILABLE", h.Fields)
			}
			break
		}
	}
	c.headers(5, true, grpcReq(mUnary)...)
	c.wantStatus(5, "200")
	if n := ts.conns.Load(); n != 2 {
		t.Errorf("the upstream accepted %d connections, want a new one after the panic", n)
	}
}

// TestPanicInTheDialerFailsTheDial: a panic in the Dialer is a failed dial (UNAVAILABLE); the
// next stream dials again.
func TestPanicInTheDialerFailsTheDial(t *testing.T) {
	ts := startGRPCServer(t, "a")
	var dials atomic.Int64
	var d net.Dialer
	dial := func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		if dials.Add(1) == 1 {
			panic("dialer bug")
		}
		return d.DialContext(ctx, "tcp", addr.String())
	}
	got, onPanic := panics()
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ts.addr), Dial: dial, Logger: discardLogger(), OnPanic: onPanic})
	cc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); status.Code(err) != codes.Unavailable {
		t.Fatalf("the call whose dial panicked: %v, want Unavailable", err)
	}
	wantPanic(t, got, "upstream dial", "dialer bug", "TestPanicInTheDialerFailsTheDial")
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatalf("the next call: %v", err)
	}
}

// panicOnce is a slog.Handler that panics the first time it handles msg.
type panicOnce struct {
	msg  string
	done atomic.Bool
}

func (h *panicOnce) Enabled(context.Context, slog.Level) bool { return true }
func (h *panicOnce) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg && h.done.CompareAndSwap(false, true) {
		panic("logger bug: " + r.Message)
	}
	return nil
}
func (h *panicOnce) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *panicOnce) WithGroup(string) slog.Handler      { return h }

// TestPanicInTheJanitorKeepsItRunning: a panic in the janitor's sweep (here its Logger, as it
// reports a keepalive without answer) is recovered, and the next sweep does the job.
func TestPanicInTheJanitorKeepsItRunning(t *testing.T) {
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {}) // never answers, never acks PING
	got, onPanic := panics()
	logger := slog.New(&panicOnce{msg: "closing upstream connection: keepalive ping unanswered"})
	addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), Logger: logger, UpstreamKeepalive: 50 * time.Millisecond, OnPanic: onPanic})
	cc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable once a later sweep drops the silent upstream", err)
	}
	wantPanic(t, got, "janitor", "logger bug", "sweep")
}
