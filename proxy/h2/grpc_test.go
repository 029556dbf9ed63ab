package h2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	mUnary        = "/detour.test.Echo/Unary"
	mWait         = "/detour.test.Echo/Wait"
	mClientStream = "/detour.test.Echo/ClientStream"
	mServerStream = "/detour.test.Echo/ServerStream"
	mBidi         = "/detour.test.Echo/Bidi"
)

var (
	descWait   = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	descClient = &grpc.StreamDesc{ClientStreams: true}
	descServer = &grpc.StreamDesc{ServerStreams: true}
	descBidi   = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
)

// through starts one grpc server and an engine routing everything to it.
func through(t *testing.T, cfg Config) (*testServer, *recorder, *grpc.ClientConn) {
	t.Helper()
	ts := startGRPCServer(t, "a")
	rec := newRecorder(ts.addr)
	cfg.Router = rec
	addr, _, _ := startProxy(t, cfg)
	return ts, rec, dialGRPC(t, addr)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestUnaryPassesHeadersTrailersAndBinaryMetadata(t *testing.T) {
	_, rec, cc := through(t, Config{})
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-echo-bin", string([]byte{0xde, 0, 0xad}))
	in := bytes.Repeat([]byte("x"), 1024)
	var out []byte
	var hdr, trl metadata.MD
	if err := cc.Invoke(ctx, mUnary, &in, &out, grpc.Header(&hdr), grpc.Trailer(&trl)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in, out) {
		t.Fatalf("echo mismatch: %d bytes back", len(out))
	}
	if got := hdr.Get("x-server"); len(got) != 1 || got[0] != "a" {
		t.Errorf("header x-server = %q", got)
	}
	if got := trl.Get("x-trailer-bin"); len(got) != 1 || got[0] != string([]byte{0, 1, 2, 0xff}) {
		t.Errorf("trailer x-trailer-bin = %q", got)
	}
	if got := trl.Get("x-echo-bin"); len(got) != 1 || got[0] != string([]byte{0xde, 0, 0xad}) {
		t.Errorf("request -bin metadata did not reach the server and back: %q", got)
	}
	res := rec.waitResult(t)
	if res.Err != nil || res.Status != 200 || res.GRPCStatus != 0 || res.ReqBytes != 1029 || res.RespBytes != 1029 {
		t.Errorf("Result = %+v", res)
	}
}

func TestNonOKStatusAsTrailersOnlyResponse(t *testing.T) {
	_, rec, cc := through(t, Config{})
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-status", "7")
	in, out := []byte("q"), []byte(nil)
	var trl metadata.MD
	err := cc.Invoke(ctx, mUnary, &in, &out, grpc.Trailer(&trl))
	st := status.Convert(err)
	if st.Code() != codes.PermissionDenied || st.Message() != "custom failure: ünïcode 100%" {
		t.Fatalf("got %v", err)
	}
	if got := trl.Get("x-trailer-bin"); len(got) != 1 {
		t.Errorf("trailers of a trailers-only response lost: %v", trl)
	}
	if res := rec.waitResult(t); res.GRPCStatus != 7 || res.Err != nil {
		t.Errorf("Result = %+v, want grpc-status 7", res)
	}
}

func TestStreamingKinds(t *testing.T) {
	_, _, cc := through(t, Config{})
	ctx := ctxT(t)
	t.Run("client streaming sums what it received", func(t *testing.T) {
		st, err := cc.NewStream(ctx, descClient, mClientStream)
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 10000)
		for i := 0; i < 50; i++ {
			if err := st.SendMsg(&msg); err != nil {
				t.Fatal(err)
			}
		}
		st.CloseSend()
		var out []byte
		if err := st.RecvMsg(&out); err != nil {
			t.Fatal(err)
		}
		if got := binary.BigEndian.Uint64(out); got != 500000 {
			t.Fatalf("server saw %d bytes", got)
		}
	})
	t.Run("server streaming delivers every message", func(t *testing.T) {
		st, err := cc.NewStream(ctx, descServer, mServerStream)
		if err != nil {
			t.Fatal(err)
		}
		req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 200), 3000)
		st.SendMsg(&req)
		st.CloseSend()
		n := 0
		for {
			var m []byte
			err := st.RecvMsg(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n != 200 {
			t.Fatalf("got %d messages", n)
		}
	})
	t.Run("bidirectional streaming echoes in order", func(t *testing.T) {
		st, err := cc.NewStream(ctx, descBidi, mBidi)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			m := binary.BigEndian.AppendUint32(nil, uint32(i))
			if err := st.SendMsg(&m); err != nil {
				t.Fatal(err)
			}
			var back []byte
			if err := st.RecvMsg(&back); err != nil {
				t.Fatal(err)
			}
			if binary.BigEndian.Uint32(back) != uint32(i) {
				t.Fatalf("message %d came back as %x", i, back)
			}
		}
		st.CloseSend()
		var m []byte
		if err := st.RecvMsg(&m); !errors.Is(err, io.EOF) {
			t.Fatalf("end of stream: %v", err)
		}
	})
}

func TestLargeMessagesBothDirections(t *testing.T) {
	_, _, cc := through(t, Config{})
	in := make([]byte, 16<<20)
	for i := range in {
		in[i] = byte(i * 7)
	}
	var out []byte
	if err := cc.Invoke(ctxT(t), mUnary, &in, &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in, out) {
		t.Fatal("16 MiB echo corrupted")
	}
}

func TestDeadlinePassesThroughAndExpires(t *testing.T) {
	ts, rec, cc := through(t, Config{})
	ctx, cancel := context.WithTimeout(ctxT(t), 300*time.Millisecond)
	defer cancel()
	st, err := cc.NewStream(ctx, descWait, mWait)
	if err != nil {
		t.Fatal(err)
	}
	var m []byte
	err = st.RecvMsg(&m)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("client got %v, want DeadlineExceeded", err)
	}
	if !<-ts.hadDeadline {
		t.Error("grpc-timeout did not reach the server")
	}
	select {
	case err := <-ts.waitErr:
		if err == nil {
			t.Error("server context not ended")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server never saw its context end")
	}
	rec.waitResult(t)
}

func TestClientCancelReachesServer(t *testing.T) {
	ts, rec, cc := through(t, Config{})
	ctx, cancel := context.WithCancel(ctxT(t))
	st, err := cc.NewStream(ctx, descWait, mWait)
	if err != nil {
		t.Fatal(err)
	}
	m := []byte("hi")
	st.SendMsg(&m)
	waitFor(t, "server handler", func() bool { return ts.calls.Load() == 1 })
	cancel()
	select {
	case err := <-ts.waitErr:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("server context ended with %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("client cancel never reached the server")
	}
	if res := rec.waitResult(t); res.Err == nil {
		t.Errorf("Result of a cancelled stream has no error: %+v", res)
	}
}

func TestPerStreamRoundRobinOverThreeServers(t *testing.T) {
	servers := []*testServer{startGRPCServer(t, "a"), startGRPCServer(t, "b"), startGRPCServer(t, "c")}
	rec := newRecorder(servers[0].addr, servers[1].addr, servers[2].addr)
	addr, srv, accepted := startProxy(t, Config{Router: rec})
	cc := dialGRPC(t, addr)
	ctx := ctxT(t)
	sem := make(chan struct{}, 30)
	var wg sync.WaitGroup
	errs := make(chan error, 90)
	for i := 0; i < 90; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			in, out := []byte("ping"), []byte(nil)
			if err := cc.Invoke(ctx, mUnary, &in, &out); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, s := range servers {
		if got := s.calls.Load(); got != 30 {
			t.Errorf("server %s got %d calls, want 30", s.name, got)
		}
		if got := s.conns.Load(); got != 1 {
			t.Errorf("server %s got %d upstream connections, want 1 (pooled, multiplexed)", s.name, got)
		}
	}
	if got := accepted.Load(); got != 1 {
		t.Errorf("client opened %d connections, want 1", got)
	}
	waitFor(t, "streams to be released", func() bool { return bufferedStreams(srv) == 0 })
	srv.mu.Lock()
	for c := range srv.clients {
		if n := c.replayBytes.Load(); n != 0 {
			t.Errorf("replay budget leaked: %d bytes still accounted", n)
		}
	}
	srv.mu.Unlock()
}

func TestUpstreamMaxConcurrentStreamsQueuesInsteadOfFailing(t *testing.T) {
	ts := startGRPCServer(t, "a", grpc.MaxConcurrentStreams(2))
	rec := newRecorder(ts.addr)
	addr, _, _ := startProxy(t, Config{Router: rec, MaxConnsPerEndpoint: 1})
	cc := dialGRPC(t, addr)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-sleep", "30ms")
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, out := []byte("x"), []byte(nil)
			if err := cc.Invoke(ctx, mUnary, &in, &out); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if m := ts.maxInFlight.Load(); m > 2 {
		t.Errorf("server ran %d streams at once; its limit is 2", m)
	}
	if ts.conns.Load() != 1 {
		t.Errorf("%d upstream connections, want 1", ts.conns.Load())
	}
}

func TestSlowClientBoundsProxyBuffering(t *testing.T) {
	ts := startGRPCServer(t, "a")
	rec := newRecorder(ts.addr)
	const window = 128 << 10
	addr, srv, _ := startProxy(t, Config{Router: rec, InitialWindow: window, ConnWindow: 512 << 10})
	// A fixed client window turns off grpc-go's BDP growth, so the client's reading pace is
	// what opens the window.
	cc := dialGRPC(t, addr, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	st, err := cc.NewStream(ctxT(t), descServer, mServerStream)
	if err != nil {
		t.Fatal(err)
	}
	const count, size = 128, 256 << 10 // 32 MiB
	req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, count), size)
	st.SendMsg(&req)
	st.CloseSend()

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var maxBuffered int
	var maxHeap uint64
	for i := 0; i < count; i++ {
		var m []byte
		if err := st.RecvMsg(&m); err != nil {
			t.Fatal(err)
		}
		if i%8 == 0 {
			time.Sleep(20 * time.Millisecond) // a slow reader
			maxBuffered = max(maxBuffered, bufferedBytes(srv))
			runtime.ReadMemStats(&ms)
			maxHeap = max(maxHeap, ms.HeapInuse)
		}
	}
	t.Logf("max bytes buffered in the engine %d, heap growth %d KiB", maxBuffered, (int64(maxHeap)-int64(base))>>10)
	if maxBuffered > window {
		t.Errorf("engine buffered %d bytes for one stream; its advertised window is %d", maxBuffered, window)
	}
	if grow := int64(maxHeap) - int64(base); grow > 24<<20 {
		t.Errorf("heap grew by %d MiB while streaming 32 MiB to a slow reader", grow>>20)
	}
}

// bufferedBytes sums the bytes the engine holds for all streams.
func bufferedBytes(srv *Server) int {
	srv.mu.Lock()
	var ccs []*clientConn
	for cc := range srv.clients {
		ccs = append(ccs, cc)
	}
	srv.mu.Unlock()
	n := 0
	for _, cc := range ccs {
		cc.mu.Lock()
		var ss []*stream
		for _, s := range cc.streams {
			ss = append(ss, s)
		}
		cc.mu.Unlock()
		for _, s := range ss {
			s.mu.Lock()
			n += s.resp.pending() + s.req.pending()
			s.mu.Unlock()
		}
	}
	return n
}

// streamWindow is the request side of a client's stream as the engine sees it.
type streamWindow struct {
	ok       bool
	pending  int   // bytes received and not yet forwarded
	withheld int   // bytes forwarded but not yet granted back (WINDOW_UPDATE batching)
	avail    int32 // what the client may still send
}

// reqWindow reports the request window of the one client stream srv holds (ok is false if it
// holds none or several).
func reqWindow(srv *Server) streamWindow {
	srv.mu.Lock()
	var ccs []*clientConn
	for cc := range srv.clients {
		ccs = append(ccs, cc)
	}
	srv.mu.Unlock()
	var ss []*stream
	for _, cc := range ccs {
		cc.mu.Lock()
		for _, s := range cc.streams {
			ss = append(ss, s)
		}
		cc.mu.Unlock()
	}
	if len(ss) != 1 {
		return streamWindow{}
	}
	s := ss[0]
	s.mu.Lock()
	defer s.mu.Unlock()
	return streamWindow{ok: true, pending: s.req.pending(), withheld: int(s.req.grant), avail: s.req.recvAvail}
}

func TestRouterErrorIsUnavailable(t *testing.T) {
	rec := newRecorder() // no endpoints
	addr, _, _ := startProxy(t, Config{Router: rec})
	cc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	err := cc.Invoke(ctxT(t), mUnary, &in, &out)
	if st := status.Convert(err); st.Code() != codes.Unavailable || !bytes.Contains([]byte(st.Message()), []byte("no endpoints for svc")) && !bytes.Contains([]byte(st.Message()), []byte("no endpoints")) {
		t.Fatalf("got %v", err)
	}
}

func TestDialFailureIsUnavailableAndAttributedToUpstream(t *testing.T) {
	rec := newRecorder(netip.MustParseAddrPort("127.0.0.1:1"))
	addr, _, _ := startProxy(t, Config{Router: rec})
	cc := dialGRPC(t, addr)
	in, out := []byte("x"), []byte(nil)
	err := cc.Invoke(ctxT(t), mUnary, &in, &out)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v", err)
	}
	if res := rec.waitResult(t); !res.Upstream || res.Err == nil {
		t.Errorf("Result = %+v, want an upstream failure", res)
	}
}
