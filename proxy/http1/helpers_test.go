package http1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// svcDst is the original destination the tests' client connections "had": a service VIP.
var svcDst = netip.MustParseAddrPort("198.19.0.10:80")

// rrRouter routes requests round-robin over addrs and records every Result.
type rrRouter struct {
	addrs []netip.AddrPort
	n     atomic.Uint64
	err   error

	mu      sync.Mutex
	results []Result
	dsts    []netip.AddrPort
}

func (r *rrRouter) Route(dst netip.AddrPort, _ *http.Request) (Route, error) {
	r.mu.Lock()
	r.dsts = append(r.dsts, dst)
	r.mu.Unlock()
	if r.err != nil {
		return Route{}, r.err
	}
	a := r.addrs[(r.n.Add(1)-1)%uint64(len(r.addrs))]
	return Route{Addr: a, Done: func(res Result) {
		r.mu.Lock()
		r.results = append(r.results, res)
		r.mu.Unlock()
	}}, nil
}

func (r *rrRouter) Results() []Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Result(nil), r.results...)
}

// waitResults waits (bounded) until n Results were reported: Done runs after the response is
// flushed, so it can trail the client's read by a moment.
func (r *rrRouter) waitResults(t *testing.T, n int) []Result {
	t.Helper()
	for i := 0; i < 500; i++ {
		if res := r.Results(); len(res) >= n {
			return res
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("got %d Results, want %d", len(r.Results()), n)
	return nil
}

// proxy is a Server serving every connection accepted on a loopback listener.
type proxy struct {
	srv   *Server
	addr  string
	dials atomic.Int64 // client connections accepted
	errs  chan error
}

func startProxy(t *testing.T, cfg Config) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{srv: NewServer(cfg), addr: ln.Addr().String(), errs: make(chan error, 1000)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.dials.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.srv.ServeConn(context.Background(), c, svcDst); err != nil {
					select {
					case p.errs <- err:
					default:
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.srv.Close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("ServeConn goroutines did not end after Close")
		}
	})
	return p
}

// upstream is a loopback HTTP server that records what reached it.
type upstream struct {
	*httptest.Server
	addr netip.AddrPort
	hits atomic.Int64

	mu   sync.Mutex
	reqs []*http.Request // clones with headers, bodies not kept
}

func startUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Clone(context.Background()))
		u.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		fmt.Fprintf(w, "hello from %s", u.Listener.Addr())
	}))
	t.Cleanup(u.Close)
	u.addr = netip.MustParseAddrPort(u.Listener.Addr().String())
	return u
}

func (u *upstream) lastRequest(t *testing.T) *http.Request {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("no request reached the upstream")
	}
	return u.reqs[len(u.reqs)-1]
}

// client returns an HTTP/1.1 keep-alive client whose every connection goes to the proxy.
func (p *proxy) client(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", p.addr)
		},
		MaxIdleConnsPerHost:   100,
		ForceAttemptHTTP2:     false,
		ExpectContinueTimeout: 30 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// rawConn dials the proxy for tests that write bytes themselves.
func (p *proxy) rawConn(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes raw request bytes and reads one response (reading its body).
func roundTrip(t *testing.T, c net.Conn, br *bufio.Reader, raw, method string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, string(b)
}

// expectClosed asserts that the peer closes the connection (bounded by the conn's deadline).
func expectClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	b, err := io.ReadAll(br)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection not closed: %v", err)
	}
	if len(b) > 0 {
		t.Fatalf("unexpected bytes after the response: %q", b)
	}
}
