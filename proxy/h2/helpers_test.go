package h2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec passes message bytes through, so the test service needs no protoc.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "raw" }

const maxMsg = 64 << 20

// testServer is a real grpc-go server with an echo-style service.
type testServer struct {
	name        string
	addr        netip.AddrPort
	calls       atomic.Int64
	conns       atomic.Int64 // connections accepted
	inFlight    atomic.Int64
	maxInFlight atomic.Int64
	waitErr     chan error // ctx.Err() seen by Wait handlers
	hadDeadline chan bool
}

func (ts *testServer) enter() func() {
	n := ts.inFlight.Add(1)
	for {
		m := ts.maxInFlight.Load()
		if n <= m || ts.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { ts.inFlight.Add(-1) }
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "detour.test.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Unary", Handler: unaryHandler},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Wait", Handler: waitHandler, ServerStreams: true, ClientStreams: true},
		{StreamName: "ClientStream", Handler: clientStreamHandler, ClientStreams: true},
		{StreamName: "ServerStream", Handler: serverStreamHandler, ServerStreams: true},
		{StreamName: "Bidi", Handler: bidiHandler, ServerStreams: true, ClientStreams: true},
	},
}

func unaryHandler(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
	if ic != nil {
		return ic(ctx, nil, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/detour.test.Echo/Unary"}, func(ctx context.Context, _ any) (any, error) {
			return unaryBody(srv, ctx, dec)
		})
	}
	return unaryBody(srv, ctx, dec)
}

func unaryBody(srv any, ctx context.Context, dec func(any) error) (any, error) {
	ts := srv.(*testServer)
	defer ts.enter()()
	ts.calls.Add(1)
	var in []byte
	if err := dec(&in); err != nil {
		return nil, err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-sleep"); len(v) > 0 {
		d, _ := time.ParseDuration(v[0])
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	trailer := metadata.Pairs("x-trailer-bin", string([]byte{0, 1, 2, 0xff}))
	for _, v := range md.Get("x-echo-bin") {
		trailer.Append("x-echo-bin", v)
	}
	grpc.SetTrailer(ctx, trailer)
	if v := md.Get("x-status"); len(v) > 0 {
		code, _ := strconv.Atoi(v[0])
		return nil, status.Error(codes.Code(code), "custom failure: ünïcode 100%")
	}
	grpc.SetHeader(ctx, metadata.Pairs("x-server", ts.name))
	return &in, nil
}

func waitHandler(srv any, st grpc.ServerStream) error {
	ts := srv.(*testServer)
	ts.calls.Add(1)
	_, ok := st.Context().Deadline()
	select {
	case ts.hadDeadline <- ok:
	default:
	}
	<-st.Context().Done()
	select {
	case ts.waitErr <- st.Context().Err():
	default:
	}
	return st.Context().Err()
}

func clientStreamHandler(srv any, st grpc.ServerStream) error {
	srv.(*testServer).calls.Add(1)
	var total uint64
	for {
		var m []byte
		err := st.RecvMsg(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		total += uint64(len(m))
	}
	out := binary.BigEndian.AppendUint64(nil, total)
	return st.SendMsg(&out)
}

// serverStreamHandler reads (count uint32, size uint32) and sends count messages of size bytes.
func serverStreamHandler(srv any, st grpc.ServerStream) error {
	srv.(*testServer).calls.Add(1)
	var m []byte
	if err := st.RecvMsg(&m); err != nil {
		return err
	}
	count, size := binary.BigEndian.Uint32(m), binary.BigEndian.Uint32(m[4:])
	msg := bytes.Repeat([]byte{'s'}, int(size))
	for i := uint32(0); i < count; i++ {
		if err := st.SendMsg(&msg); err != nil {
			return err
		}
	}
	return nil
}

func bidiHandler(srv any, st grpc.ServerStream) error {
	srv.(*testServer).calls.Add(1)
	for {
		var m []byte
		err := st.RecvMsg(&m)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := st.SendMsg(&m); err != nil {
			return err
		}
	}
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func startGRPCServer(t testing.TB, name string, opts ...grpc.ServerOption) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{name: name, addr: netip.MustParseAddrPort(ln.Addr().String()),
		waitErr: make(chan error, 16), hadDeadline: make(chan bool, 16)}
	opts = append(opts, grpc.ForceServerCodec(rawCodec{}), grpc.MaxRecvMsgSize(maxMsg), grpc.MaxSendMsgSize(maxMsg))
	gs := grpc.NewServer(opts...)
	gs.RegisterService(&echoDesc, ts)
	go gs.Serve(countingListener{ln, &ts.conns})
	t.Cleanup(gs.Stop)
	return ts
}

// startProxy runs an engine on a loopback listener; every connection gets dst = its own address.
func startProxy(t testing.TB, cfg Config) (netip.AddrPort, *Server, *atomic.Int64) {
	t.Helper()
	srv := NewServer(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	accepted := new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go srv.ServeConn(context.Background(), c, addr)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		srv.Close()
	})
	return addr, srv, accepted
}

func dialGRPC(t testing.TB, addr netip.AddrPort, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append(opts,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)))
	cc, err := grpc.NewClient("passthrough:///"+addr.String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// recorder is a Router sending every stream to a fixed endpoint (or the next of several,
// round-robin) and recording each Result.
type recorder struct {
	addrs []netip.AddrPort
	next  atomic.Uint64
	mu    sync.Mutex
	res   []Result
	heads []Head
	done  chan Result
}

func newRecorder(addrs ...netip.AddrPort) *recorder {
	return &recorder{addrs: addrs, done: make(chan Result, 1024)}
}

func (r *recorder) Route(dst netip.AddrPort, h *Head) (Route, error) {
	if len(r.addrs) == 0 {
		return Route{}, errors.New("no endpoints for " + h.Authority)
	}
	hc := *h
	hc.Header = append([]hpack.HeaderField(nil), h.Header...)
	r.mu.Lock()
	r.heads = append(r.heads, hc)
	r.mu.Unlock()
	a := r.addrs[int(r.next.Add(1)-1)%len(r.addrs)]
	return Route{Addr: a, Done: func(res Result) {
		r.mu.Lock()
		r.res = append(r.res, res)
		r.mu.Unlock()
		select {
		case r.done <- res:
		default:
		}
	}}, nil
}

func (r *recorder) waitResult(t testing.TB) Result {
	t.Helper()
	select {
	case res := <-r.done:
		return res
	case <-time.After(10 * time.Second):
		t.Fatal("no Result reported within 10s")
		return Result{}
	}
}

// frameLog keeps a text trace of frames, printed only when the test fails (x/net serverTester).
type frameLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *frameLog) add(dir string, f http2.Frame) {
	s := dir + " " + summarize(f)
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

func (l *frameLog) attach(t testing.TB, name string) {
	t.Cleanup(func() {
		if t.Failed() {
			l.mu.Lock()
			t.Logf("%s frames:\n%s", name, strings.Join(l.lines, "\n"))
			l.mu.Unlock()
		}
	})
}

func summarize(f http2.Frame) string {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		var b strings.Builder
		fmt.Fprintf(&b, "HEADERS stream=%d end=%v", f.StreamID, f.StreamEnded())
		for _, hf := range f.Fields {
			fmt.Fprintf(&b, " %s=%q", hf.Name, hf.Value)
		}
		return b.String()
	case *http2.DataFrame:
		return fmt.Sprintf("DATA stream=%d len=%d end=%v", f.StreamID, len(f.Data()), f.StreamEnded())
	case *http2.RSTStreamFrame:
		return fmt.Sprintf("RST_STREAM stream=%d code=%v", f.StreamID, f.ErrCode)
	case *http2.GoAwayFrame:
		return fmt.Sprintf("GOAWAY last=%d code=%v debug=%q", f.LastStreamID, f.ErrCode, f.DebugData())
	}
	return fmt.Sprintf("%v", f.Header())
}

// rawClient speaks HTTP/2 frames to the engine directly.
type rawClient struct {
	mu     sync.Mutex // serializes writes
	t      testing.TB
	c      net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	log    *frameLog
}

func dialRaw(t testing.TB, addr netip.AddrPort) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, log: &frameLog{}}
	rc.log.attach(t, "client")
	rc.fr = http2.NewFramer(c, c)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.fr.MaxHeaderListSize = 1 << 20
	rc.enc = hpack.NewEncoder(&rc.encBuf)
	io.WriteString(c, http2.ClientPreface)
	rc.fr.WriteSettings()
	return rc
}

// block encodes name/value pairs as a header block.
func (rc *rawClient) block(kv ...string) []byte {
	rc.encBuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		rc.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), rc.encBuf.Bytes()...)
}

// do runs a write under the client's write lock.
func (rc *rawClient) do(w func(fr *http2.Framer) error) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return w(rc.fr)
}

func (rc *rawClient) headers(id uint32, end bool, kv ...string) {
	rc.t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.block(kv...), EndStream: end, EndHeaders: true}); err != nil {
		rc.t.Fatalf("writing HEADERS: %v", err)
	}
}

func reqHeaders(extra ...string) []string {
	return append([]string{":method", "POST", ":scheme", "http", ":authority", "svc.test", ":path", "/detour.test.Echo/Unary", "content-type", "application/grpc", "te", "trailers"}, extra...)
}

// next reads one frame (acking SETTINGS and PINGs), failing the test after d.
func (rc *rawClient) next(d time.Duration) (http2.Frame, error) {
	rc.c.SetReadDeadline(time.Now().Add(d))
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		rc.log.add("<-", f)
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				rc.do(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
			continue
		case *http2.PingFrame:
			continue
		case *http2.WindowUpdateFrame:
			continue
		}
		return f, nil
	}
}

// until reads frames until match returns true, failing on error or after 10s.
func (rc *rawClient) until(what string, match func(http2.Frame) bool) http2.Frame {
	rc.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := rc.next(time.Until(deadline))
		if err != nil {
			rc.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return f
		}
	}
}

// closedAfter reports whether the engine closes the connection (EOF) within 10s, draining frames.
func (rc *rawClient) closedAfter() (goaway *http2.GoAwayFrame, closed bool) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := rc.next(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return goaway, false
			}
			rc.log.mu.Lock()
			rc.log.lines = append(rc.log.lines, "read error: "+err.Error())
			rc.log.mu.Unlock()
			return goaway, true
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			goaway = g
		}
	}
}

func fieldValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// rawUpstream is a scripted HTTP/2 server for upstream edge cases.
type rawUpstream struct {
	addr   netip.AddrPort
	conns  atomic.Int64
	closed atomic.Int64
	log    *frameLog
	// handle runs on the connection's read goroutine for each request HEADERS; n is the
	// connection's ordinal (1-based).
	handle func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame)
	// onData, if set, sees request DATA.
	onData func(sc *rawServerConn, f *http2.DataFrame)
	// onRST and onGoAway, if set, see the engine's RST_STREAM and GOAWAY frames.
	onRST    func(sc *rawServerConn, f *http2.RSTStreamFrame)
	onGoAway func(sc *rawServerConn, f *http2.GoAwayFrame)
	// noGrant keeps the upstream from ever returning flow-control window (a server that
	// stopped reading).
	noGrant bool
	// settings are sent in the upstream's SETTINGS frame; set before the first dial.
	settings []http2.Setting
	received atomic.Int64
}

type rawServerConn struct {
	c      net.Conn
	fr     *http2.Framer
	mu     sync.Mutex
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	log    *frameLog
}

func startRawUpstream(t testing.TB, handle func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame)) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ru := &rawUpstream{addr: netip.MustParseAddrPort(ln.Addr().String()), handle: handle, log: &frameLog{}}
	ru.log.attach(t, "upstream")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range all {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
			n := ru.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				ru.serve(c, n)
				ru.closed.Add(1)
			}()
		}
	}()
	return ru
}

func (ru *rawUpstream) serve(c net.Conn, n int64) {
	defer c.Close()
	pre := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, pre); err != nil {
		return
	}
	sc := &rawServerConn{c: c, fr: http2.NewFramer(c, c), log: ru.log}
	sc.enc = hpack.NewEncoder(&sc.encBuf)
	sc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	sc.mu.Lock()
	sc.fr.WriteSettings(ru.settings...)
	sc.mu.Unlock()
	for {
		f, err := sc.fr.ReadFrame()
		if err != nil {
			return
		}
		ru.log.add(fmt.Sprintf("up%d<-", n), f)
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				sc.mu.Lock()
				sc.fr.WriteSettingsAck()
				sc.mu.Unlock()
			}
		case *http2.MetaHeadersFrame:
			ru.handle(sc, n, f)
		case *http2.RSTStreamFrame:
			if ru.onRST != nil {
				ru.onRST(sc, f)
			}
		case *http2.GoAwayFrame:
			if ru.onGoAway != nil {
				ru.onGoAway(sc, f)
			}
		case *http2.DataFrame:
			if ru.onData != nil {
				ru.onData(sc, f)
			}
			ru.received.Add(int64(len(f.Data())))
			if l := len(f.Data()); l > 0 && !ru.noGrant {
				sc.mu.Lock()
				sc.fr.WriteWindowUpdate(0, uint32(l))
				sc.fr.WriteWindowUpdate(f.StreamID, uint32(l))
				sc.mu.Unlock()
			}
		}
	}
}

func (sc *rawServerConn) headers(id uint32, end bool, kv ...string) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.encBuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		sc.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	sc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: sc.encBuf.Bytes(), EndStream: end, EndHeaders: true})
}

func (sc *rawServerConn) data(id uint32, end bool, p []byte) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.fr.WriteData(id, end, p)
}

func (sc *rawServerConn) rst(id uint32, code http2.ErrCode) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.fr.WriteRSTStream(id, code)
}

func (sc *rawServerConn) goAway(last uint32, code http2.ErrCode) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.fr.WriteGoAway(last, code, nil)
}

// respondGRPC answers a gRPC call with one message and grpc-status 0.
func (sc *rawServerConn) respondGRPC(id uint32, msg []byte) {
	sc.headers(id, false, ":status", "200", "content-type", "application/grpc")
	frame := append([]byte{0, 0, 0, 0, 0}, msg...)
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	sc.data(id, false, frame)
	sc.headers(id, true, "grpc-status", "0")
}

// grpcFrame is a length-prefixed gRPC message.
func grpcFrame(msg []byte) []byte {
	frame := append([]byte{0, 0, 0, 0, 0}, msg...)
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	return frame
}

// waitFor polls cond every 5ms for up to 10s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
