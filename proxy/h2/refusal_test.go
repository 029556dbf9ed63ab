package h2

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// refuser is a Router that refuses every stream with refusal and reports the Result through
// the Route's Done, as a policy-enforcing Router that also feeds metrics would.
func refuser(refusal error, results chan<- Result, conns chan<- ConnInfo, upstream ...netip.AddrPort) RouterFunc {
	return func(dst netip.AddrPort, h *Head) (Route, error) {
		if len(upstream) > 0 {
			dst = upstream[0]
		}
		if conns != nil {
			conns <- *h.Conn
		}
		return Route{Addr: dst, Done: func(r Result) { results <- r }}, refusal
	}
}

func TestRefusalAnswersGRPCWithPermissionDenied(t *testing.T) {
	ts := startGRPCServer(t, "a")
	results := make(chan Result, 1)
	router := refuser(&Refusal{Message: "spiffe://cluster.local/ns/x/sa/y may not call port 8080"}, results, nil, ts.addr)
	addr, _, _ := startProxy(t, Config{Router: router, Logger: discardLogger()})
	cc := dialGRPC(t, addr)
	in := []byte("hello")
	var out []byte
	err := cc.Invoke(ctxT(t), mUnary, &in, &out)
	st, _ := status.FromError(err)
	if st.Code() != codes.PermissionDenied || st.Message() != "spiffe://cluster.local/ns/x/sa/y may not call port 8080" {
		t.Fatalf("Invoke error = %v, want PermissionDenied with the refusal's message", err)
	}
	res := <-results
	if res.Status != 200 || res.GRPCStatus != 7 || res.Upstream || res.Err == nil {
		t.Errorf("Result = %+v, want status 200, grpc-status 7, not the upstream's fault", res)
	}
	if n := ts.calls.Load() + ts.conns.Load(); n != 0 {
		t.Errorf("the upstream saw %d calls and connections; a refused request must not reach it", n)
	}
}

func TestRefusalAnswersHTTPWithItsStatus(t *testing.T) {
	cases := []struct {
		name       string
		refusal    error
		wantStatus string
		wantBody   string
	}{
		{"a default refusal is 403 permission denied", &Refusal{}, "403", "permission denied\n"},
		{"a refusal carries its own status and message", &Refusal{HTTPStatus: 401, Message: "plaintext refused"}, "401", "plaintext refused\n"},
		{"a wrapped refusal is still a refusal", fmt.Errorf("policy: %w", &Refusal{Message: "no"}), "403", "no\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			results := make(chan Result, 1)
			addr, _, _ := startProxy(t, Config{Router: refuser(tc.refusal, results, nil), Logger: discardLogger()})
			rc := dialRaw(t, addr)
			rc.headers(1, true, ":method", "GET", ":scheme", "http", ":authority", "svc.test", ":path", "/")
			h := rc.until("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if got := fieldValue(h, ":status"); got != tc.wantStatus {
				t.Errorf(":status = %q, want %q", got, tc.wantStatus)
			}
			d := rc.until("response DATA", func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
			if string(d.Data()) != tc.wantBody || !d.StreamEnded() {
				t.Errorf("body = %q (end %v), want %q and the end of the stream", d.Data(), d.StreamEnded(), tc.wantBody)
			}
			if res := <-results; res.Upstream || res.Status == 0 {
				t.Errorf("Result = %+v, want the status sent and not the upstream's fault", res)
			}
		})
	}
}

func TestOtherRouterErrorsStayUnavailable(t *testing.T) {
	results := make(chan Result, 1)
	addr, _, _ := startProxy(t, Config{Router: refuser(fmt.Errorf("no endpoints"), results, nil), Logger: discardLogger()})
	cc := dialGRPC(t, addr)
	in := []byte("hello")
	var out []byte
	err := cc.Invoke(ctxT(t), mUnary, &in, &out)
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable {
		t.Fatalf("Invoke error = %v, want Unavailable", err)
	}
	if res := <-results; res.GRPCStatus != 14 {
		t.Errorf("Result = %+v, want grpc-status 14", res)
	}
}

func TestRouterSeesTheConnInfoOfServeConnWith(t *testing.T) {
	conns := make(chan ConnInfo, 4)
	results := make(chan Result, 4)
	srv := NewServer(Config{Router: refuser(&Refusal{}, results, conns), Logger: discardLogger()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); srv.Close() })
	addr := netip.MustParseAddrPort(ln.Addr().String())
	const peer = "spiffe://cluster.local/ns/web/sa/stockweb"
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if i == 0 {
				go srv.ServeConnWith(context.Background(), c, addr, ConnInfo{Peer: peer})
			} else {
				go srv.ServeConn(context.Background(), c, addr)
			}
		}
	}()
	for i, want := range []string{peer, ""} {
		rc := dialRaw(t, addr)
		rc.headers(1, true, reqHeaders()...)
		rc.until("the refusal", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
		if got := <-conns; got.Peer != want {
			t.Errorf("connection %d: Router saw Peer %q, want %q", i, got.Peer, want)
		}
		<-results
	}
}
