package http1

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// policyRouter refuses requests whose peer is not allowed, routes the others to up, and reports
// every Result and the ConnInfo each request arrived with.
type policyRouter struct {
	up      netip.AddrPort
	allowed string // the one peer let through
	refusal error
	seen    chan ConnInfo
	results chan Result
}

func (p *policyRouter) Route(_ netip.AddrPort, r *http.Request) (Route, error) {
	info := ConnInfoOf(r)
	p.seen <- info
	route := Route{Addr: p.up, Done: func(res Result) { p.results <- res }}
	if info.Peer != p.allowed {
		return route, p.refusal
	}
	return route, nil
}

// startPeerProxy serves each accepted connection with ServeConnWith and the next of peers.
func startPeerProxy(t *testing.T, router Router, peers ...string) string {
	t.Helper()
	srv := NewServer(Config{Router: router})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); srv.Close() })
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConnWith(context.Background(), c, svcDst, ConnInfo{Peer: peers[i%len(peers)]})
		}
	}()
	return ln.Addr().String()
}

func TestRefusalAnswersItsStatusAndKeepsTheConnection(t *testing.T) {
	const web = "spiffe://cluster.local/ns/web/sa/stockweb"
	cases := []struct {
		name     string
		peer     string
		refusal  error
		wantCode int
		wantBody string
		reached  bool
	}{
		{"an allowed peer reaches the upstream", web, &Refusal{}, 200, "ok", true},
		{"another peer gets the default 403", "spiffe://cluster.local/ns/x/sa/y", &Refusal{}, 403, "permission denied\n", false},
		{"plaintext gets the refusal's own status and message", "", &Refusal{HTTPStatus: 401, Message: "plaintext refused on port 80"}, 401, "plaintext refused on port 80\n", false},
		{"a wrapped refusal is still a refusal", "", fmt.Errorf("policy: %w", &Refusal{Message: "no"}), 403, "no\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
			pr := &policyRouter{up: up.addr, allowed: web, refusal: tc.refusal, seen: make(chan ConnInfo, 4), results: make(chan Result, 4)}
			addr := startPeerProxy(t, pr, tc.peer)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			for i := range 2 { // the second request proves the connection stays usable
				resp, body := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n", "GET")
				if resp.StatusCode != tc.wantCode || body != tc.wantBody {
					t.Fatalf("request %d: %d %q, want %d %q", i, resp.StatusCode, body, tc.wantCode, tc.wantBody)
				}
				if info := <-pr.seen; info.Peer != tc.peer {
					t.Errorf("Router saw Peer %q, want %q", info.Peer, tc.peer)
				}
				res := <-pr.results
				if res.Status != tc.wantCode || res.Upstream || (res.Err == nil) == !tc.reached {
					t.Errorf("Result = %+v", res)
				}
			}
			if got := up.hits.Load(); (got > 0) != tc.reached {
				t.Errorf("upstream hits = %d, want reached %v", got, tc.reached)
			}
		})
	}
}

func TestRouterSeesNoConnInfoFromServeConn(t *testing.T) {
	up := startUpstream(t, nil)
	pr := &policyRouter{up: up.addr, refusal: &Refusal{}, seen: make(chan ConnInfo, 1), results: make(chan Result, 1)}
	p := startProxy(t, Config{Router: pr})
	resp, err := p.client(t).Get("http://svc.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if info := <-pr.seen; info != (ConnInfo{}) {
		t.Errorf("ConnInfoOf = %+v, want zero", info)
	}
	if resp.StatusCode != 200 {
		t.Errorf("status %d, want 200 (the empty peer is the allowed one)", resp.StatusCode)
	}
}

func TestOtherRouterErrorsStay503(t *testing.T) {
	p := startProxy(t, Config{Router: &rrRouter{err: fmt.Errorf("no endpoints")}})
	resp, err := p.client(t).Get("http://svc.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", resp.StatusCode)
	}
}
