package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// streamFor is how long the long call of the tests below lasts after its response headers. It
// only has to dwarf a unary call's latency (well under a millisecond here): before the fix the
// balancer took the whole stream as its endpoint's latency.
const streamFor = time.Second

// unaryTakes is what the servers' unary handlers take: real work, so that the latency P2C
// compares is the servers' and not scheduling noise of a few microseconds, which a stray slow
// call would multiply.
const unaryTakes = 10 * time.Millisecond

// TestLongStreamDoesNotMakeItsEndpointLookSlow is issue 9's B.3 test: after a long
// server-streaming call that answered its headers at once, the balancer (P2C over peak-EWMA)
// still spreads unary load over both endpoints, the one that served the stream included. The
// latency it learns is the time to response headers (balance.Pick.Done), not the life of the
// stream, which made a healthy endpoint look a second slow (or a minute, for a minute's stream).
func TestLongStreamDoesNotMakeItsEndpointLookSlow(t *testing.T) {
	t.Run("HTTP/2", func(t *testing.T) {
		a, b := startStreamingGRPC(t), startStreamingGRPC(t)
		p, vip := proxyTo(t, a.addr, b.addr)
		front := serveWith(t, func(c net.Conn) { p.h2out.ServeConn(context.Background(), c, vip) })
		cc, err := grpc.NewClient("passthrough:///"+front.String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(passCodec{})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		unary := func() error {
			in, out := []byte("x"), []byte(nil)
			return cc.Invoke(context.Background(), "/detour.test.Stream/Unary", &in, &out)
		}
		long := func() error {
			st, err := cc.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true}, "/detour.test.Stream/Long")
			if err != nil {
				return err
			}
			in := []byte("x")
			if err := st.SendMsg(&in); err != nil {
				return err
			}
			st.CloseSend()
			if _, err := st.Header(); err != nil {
				return err
			}
			var m []byte
			if err := st.RecvMsg(&m); err != io.EOF {
				return fmt.Errorf("end of the long stream: %v", err)
			}
			return nil
		}
		checkSpread(t, p, a, b, unary, long)
	})
	t.Run("HTTP/1", func(t *testing.T) {
		a, b := startStreamingHTTP(t), startStreamingHTTP(t)
		p, vip := proxyTo(t, a.addr, b.addr)
		front := serveWith(t, func(c net.Conn) { p.h1out.ServeConn(context.Background(), c, vip) })
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
		t.Cleanup(client.CloseIdleConnections)
		get := func(path string) error {
			resp, err := client.Get("http://" + front.String() + path)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				return err
			}
			if resp.StatusCode != 200 {
				return fmt.Errorf("GET %s: %s", path, resp.Status)
			}
			return nil
		}
		checkSpread(t, p, a, b, func() error { return get("/unary") }, func() error { return get("/long") })
	})
}

// checkSpread warms both endpoints up and runs one long call: the latency the balancer then
// estimates for the endpoint that served it must be far below the stream's length (what a user
// sees in /debug/endpoints). Then 400 unary calls, 8 at a time, must be spread over both
// endpoints, each serving a tenth of them or more: an endpoint taken for a second slow gets none,
// while one stray slow call (peak-EWMA takes it at once, and forgets it over 10 s) may tilt
// the split between two healthy endpoints to 1:5.
func checkSpread(t *testing.T, p *Proxy, a, b *streamingServer, unary, long func() error) {
	t.Helper()
	for range 20 {
		if err := unary(); err != nil {
			t.Fatal(err)
		}
	}
	if err := long(); err != nil {
		t.Fatal(err)
	}
	streamed := a
	if b.long.Load() == 1 {
		streamed = b
	}
	for _, svc := range p.routes.doc(false).Services {
		for _, ep := range svc.Endpoints {
			if ep.Address == streamed.addr.String() {
				t.Logf("estimate for the endpoint that served the %v stream: %.3f ms", streamFor, ep.RTTms)
				if ep.RTTms > float64(streamFor.Milliseconds())/10 {
					t.Errorf("the balancer takes the endpoint that served a %v stream for %.1f ms slow", streamFor, ep.RTTms)
				}
			}
		}
	}
	a0, b0 := a.unary.Load(), b.unary.Load()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if err := unary(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	da, db := a.unary.Load()-a0, b.unary.Load()-b0
	t.Logf("unary calls after a %v stream: %d and %d", streamFor, da, db)
	if da < 40 || db < 40 {
		t.Errorf("unary calls split %d / %d after one long stream; want each endpoint to serve a tenth of the 400 or more", da, db)
	}
}

// proxyTo makes a proxy whose discovery has one service at a VIP with endpoints a and b.
func proxyTo(t *testing.T, a, b netip.AddrPort) (*Proxy, netip.AddrPort) {
	t.Helper()
	p := New(Config{Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { p.h2out.Close() })
	vip := netip.MustParseAddrPort("198.19.0.77:80")
	p.update(mustParse(t, fmt.Sprintf(`trustDomain: cluster.local
services:
  - name: long.test
    addresses: [%q]
    endpoints:
      - address: %q
      - address: %q
`, vip, a, b)))
	return p, vip
}

// serveWith accepts loopback connections and serves each with serve on its own goroutine.
func serveWith(t *testing.T, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
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
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// passCodec passes message bytes through, so the test service needs no protoc.
type passCodec struct{}

func (passCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (passCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (passCodec) Name() string { return "pass" }

type streamingServer struct {
	addr        netip.AddrPort
	unary, long atomic.Int64
}

// startStreamingGRPC runs a real grpc-go server with Unary (echo) and Long: response headers at
// once, then nothing for streamFor, then OK.
func startStreamingGRPC(t *testing.T) *streamingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &streamingServer{addr: netip.MustParseAddrPort(ln.Addr().String())}
	gs := grpc.NewServer(grpc.ForceServerCodec(passCodec{}))
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: "detour.test.Stream",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Unary", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			srv.(*streamingServer).unary.Add(1)
			time.Sleep(unaryTakes)
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			return &in, nil
		}}},
		Streams: []grpc.StreamDesc{{StreamName: "Long", ServerStreams: true, Handler: func(srv any, st grpc.ServerStream) error {
			srv.(*streamingServer).long.Add(1)
			var in []byte
			if err := st.RecvMsg(&in); err != nil {
				return err
			}
			if err := st.SendHeader(metadata.MD{}); err != nil {
				return err
			}
			select {
			case <-time.After(streamFor):
			case <-st.Context().Done():
			}
			return nil
		}}},
	}, s)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return s
}

// startStreamingHTTP runs a net/http server with /unary and /long: headers at once (flushed),
// then nothing for streamFor, then the end of the chunked body.
func startStreamingHTTP(t *testing.T) *streamingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &streamingServer{addr: netip.MustParseAddrPort(ln.Addr().String())}
	mux := http.NewServeMux()
	mux.HandleFunc("/unary", func(w http.ResponseWriter, _ *http.Request) {
		s.unary.Add(1)
		time.Sleep(unaryTakes)
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/long", func(w http.ResponseWriter, r *http.Request) {
		s.long.Add(1)
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-time.After(streamFor):
		case <-r.Context().Done():
		}
		io.WriteString(w, "done")
	})
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return s
}
