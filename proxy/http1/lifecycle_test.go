package http1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAClientThatGoesAwayCancelsItsUpstreamRequest(t *testing.T) {
	tests := []struct {
		name      string
		firstByte bool // the upstream has started its response
	}{
		{"before the response starts", false},
		{"in the middle of the response body", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started, cancelled := make(chan struct{}), make(chan struct{})
			up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.firstByte {
					io.WriteString(w, "first bytes")
					w.(http.Flusher).Flush()
				}
				close(started)
				select {
				case <-r.Context().Done():
					close(cancelled)
				case <-time.After(15 * time.Second):
				}
			})
			rt := &rrRouter{addrs: []netip.AddrPort{up.addr}}
			p := startProxy(t, Config{Router: rt})
			c := p.rawConn(t)
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
			<-started
			if tt.firstByte {
				buf := make([]byte, 1)
				if _, err := c.Read(buf); err != nil {
					t.Fatal(err)
				}
			}
			c.Close()
			select {
			case <-cancelled:
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream request was not cancelled")
			}
			res := rt.waitResults(t, 1)
			if res[0].Err == nil || res[0].Upstream {
				t.Fatalf("Result %+v, want a client-side error", res[0])
			}
		})
	}
}

func TestShutdownClosesIdleConnectionsAndLetsInFlightRequestsFinish(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "done")
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})

	idle := p.rawConn(t)
	idleBR := bufio.NewReader(idle)
	roundTrip(t, idle, idleBR, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n", "GET")

	busy := p.rawConn(t)
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n")
	<-started

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- p.srv.Shutdown(ctx)
	}()
	expectClosed(t, idleBR)
	close(release)
	busyBR := bufio.NewReader(busy)
	resp, err := http.ReadResponse(busyBR, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "done" || !resp.Close {
		t.Fatalf("in-flight request got %d %q close=%v, want 200 done with Connection: close", resp.StatusCode, b, resp.Close)
	}
	expectClosed(t, busyBR)
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	a, b2 := net.Pipe()
	defer b2.Close()
	if err := p.srv.ServeConn(context.Background(), a, svcDst); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeConn after Shutdown: %v, want ErrServerClosed", err)
	}
}

// hiddenConn hides the socket from the liveness peek, as a TLS connection would.
type hiddenConn struct{ net.Conn }

func TestARequestOnAPooledConnectionTheUpstreamClosedIsReplayedOnce(t *testing.T) {
	// The upstream answers one request per connection without saying Connection: close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	closed := make(chan struct{}, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err == nil {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
				c.Close()
				closed <- struct{}{}
			}()
		}
	}()
	addr := netip.MustParseAddrPort(ln.Addr().String())
	tests := []struct {
		name    string
		hide    bool
		retries int
	}{
		{"a closed socket is noticed before reuse", false, 0},
		{"a closed connection that cannot be peeked is replayed", true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &rrRouter{addrs: []netip.AddrPort{addr}}
			dial := func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", a.String())
				if err != nil || !tt.hide {
					return c, err
				}
				return hiddenConn{c}, nil
			}
			p := startProxy(t, Config{Router: rt, Dial: dial})
			c := p.rawConn(t)
			br := bufio.NewReader(c)
			for i := 0; i < 2; i++ {
				resp, body := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n", "GET")
				if resp.StatusCode != 200 || body != "ok" {
					t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
				}
				<-closed
			}
			res := rt.waitResults(t, 2)
			if res[1].Retries != tt.retries {
				t.Fatalf("second request Retries %d, want %d", res[1].Retries, tt.retries)
			}
		})
	}
}

func TestCurlKeepAliveRequestsAreBalanced(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	ups := []*upstream{startUpstream(t, nil), startUpstream(t, nil)}
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{ups[0].addr, ups[1].addr}}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u := "http://" + p.addr + "/"
	out, err := exec.CommandContext(ctx, curl, "--http1.1", "-sS", "-H", "Host: web.example", u, u, u, u).CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	for _, up := range ups {
		if !strings.Contains(string(out), up.Listener.Addr().String()) || up.hits.Load() != 2 {
			t.Errorf("upstream %s: %d hits, output %q", up.Listener.Addr(), up.hits.Load(), out)
		}
	}
	if p.dials.Load() != 1 {
		t.Errorf("curl opened %d connections, want 1", p.dials.Load())
	}
}

func TestPooledUpstreamConnectionsAreReused(t *testing.T) {
	var conns sync.Map
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { conns.Store(r.RemoteAddr, true) })
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	cl := p.client(t)
	for i := 0; i < 20; i++ {
		resp, err := cl.Get("http://svc/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	n := 0
	conns.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Fatalf("20 sequential requests used %d upstream connections, want 1", n)
	}
}
