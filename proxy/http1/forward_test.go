package http1

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

func TestOneKeepAliveConnectionReachesEveryUpstreamEvenly(t *testing.T) {
	ups := []*upstream{startUpstream(t, nil), startUpstream(t, nil), startUpstream(t, nil)}
	rt := &rrRouter{addrs: []netip.AddrPort{ups[0].addr, ups[1].addr, ups[2].addr}}
	p := startProxy(t, Config{Router: rt})
	cl := p.client(t)
	for i := 0; i < 30; i++ {
		resp, err := cl.Get("http://stockdata.stocks/quote")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if n := p.dials.Load(); n != 1 {
		t.Errorf("client opened %d connections to the proxy, want 1 keep-alive connection", n)
	}
	for i, u := range ups {
		if n := u.hits.Load(); n != 10 {
			t.Errorf("upstream %d got %d requests, want 10", i, n)
		}
		r := u.lastRequest(t)
		if r.Host != "stockdata.stocks" {
			t.Errorf("upstream saw Host %q, want the client's stockdata.stocks", r.Host)
		}
		if v := r.Header.Get("X-Forwarded-For"); v != "" {
			t.Errorf("upstream saw X-Forwarded-For %q, want none (transparent)", v)
		}
	}
	res := rt.waitResults(t, 30)
	for _, r := range res {
		if r.Status != 200 || r.Err != nil || r.Upstream {
			t.Errorf("Result %+v, want a clean 200", r)
		}
	}
	for _, d := range rt.dsts {
		if d != svcDst {
			t.Fatalf("Router saw dst %v, want %v", d, svcDst)
		}
	}
}

func TestConcurrentClientsAreBalancedAcrossUpstreams(t *testing.T) {
	ups := []*upstream{startUpstream(t, nil), startUpstream(t, nil), startUpstream(t, nil)}
	rt := &rrRouter{addrs: []netip.AddrPort{ups[0].addr, ups[1].addr, ups[2].addr}}
	p := startProxy(t, Config{Router: rt})
	const clients, each = 8, 30
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		cl := p.client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < each; j++ {
				resp, err := cl.Get("http://svc/")
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, u := range ups {
		if n := u.hits.Load(); n != clients*each/3 {
			t.Errorf("upstream %d got %d requests, want %d", i, n, clients*each/3)
		}
	}
	rt.waitResults(t, clients*each)
}

func TestDoneIsCalledOncePerRequestWithTheStatusSent(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		var code int
		fmt.Sscan(strings.TrimPrefix(r.URL.Path, "/"), &code)
		w.WriteHeader(code)
		io.WriteString(w, "body")
	})
	dead := netip.MustParseAddrPort("127.0.0.1:1") // nothing listens on port 1
	tests := []struct {
		name     string
		addr     netip.AddrPort
		path     string
		status   int
		upstream bool
	}{
		{"a 200 from the upstream is reported as 200", up.addr, "/200", 200, false},
		{"a 404 from the upstream is reported as 404", up.addr, "/404", 404, false},
		{"a 500 from the upstream is reported as 500 without blaming the endpoint", up.addr, "/500", 500, false},
		{"a refused dial is a 502 blamed on the endpoint", dead, "/200", 502, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &rrRouter{addrs: []netip.AddrPort{tt.addr}}
			p := startProxy(t, Config{Router: rt})
			resp, err := p.client(t).Get("http://svc" + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, b, tt.status)
			}
			res := rt.waitResults(t, 1)
			if len(res) != 1 {
				t.Fatalf("Done called %d times, want once", len(res))
			}
			r := res[0]
			if r.Status != tt.status || r.Upstream != tt.upstream || r.Addr != tt.addr {
				t.Errorf("Result %+v, want status %d upstream=%v addr %v", r, tt.status, tt.upstream, tt.addr)
			}
			if tt.upstream && r.Err == nil {
				t.Error("Result.Err is nil for a failed exchange")
			}
			if !tt.upstream && r.RespBytes != 4 {
				t.Errorf("RespBytes %d, want 4", r.RespBytes)
			}
		})
	}
}

func TestUpstreamDialFailureIs502NamingTheEndpoint(t *testing.T) {
	dead := netip.MustParseAddrPort("127.0.0.1:1")
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{dead}}})
	c := p.rawConn(t)
	br := bufio.NewReader(c)
	resp, body := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n", "GET")
	if resp.StatusCode != 502 || !strings.Contains(body, "127.0.0.1:1") || strings.Count(body, "\n") != 1 {
		t.Fatalf("got %d %q, want 502 with one line naming 127.0.0.1:1", resp.StatusCode, body)
	}
	// A bodyless request leaves the connection usable.
	resp, _ = roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n", "GET")
	if resp.StatusCode != 502 {
		t.Fatalf("second request on the connection: %d", resp.StatusCode)
	}
}

func TestRouterErrorIs503WithTheErrorText(t *testing.T) {
	rt := &rrRouter{err: fmt.Errorf("no endpoints for stockdata.stocks\nhealthy: 0")}
	p := startProxy(t, Config{Router: rt})
	c := p.rawConn(t)
	br := bufio.NewReader(c)
	resp, body := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n", "GET")
	if resp.StatusCode != 503 || !strings.Contains(body, "no endpoints for stockdata.stocks healthy: 0") || strings.Count(body, "\n") != 1 {
		t.Fatalf("got %d %q, want 503 with the router's error on one line", resp.StatusCode, body)
	}
}

func TestHopByHopFieldsAreStrippedBothWays(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Up-Hop")
		w.Header().Set("X-Up-Hop", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Upgrade", "h2c")
		w.Header().Set("X-End-To-End", "kept")
		io.WriteString(w, "ok")
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.rawConn(t)
	br := bufio.NewReader(c)
	resp, _ := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: svc.example\r\n"+
		"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=9\r\nProxy-Connection: keep-alive\r\n"+
		"TE: trailers, deflate\r\nUpgrade: foo\r\nX-Keep: yes\r\nProxy-Authorization: Basic eA==\r\n\r\n", "GET")
	r := up.lastRequest(t)
	for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Connection", "Upgrade"} {
		if v, ok := r.Header[k]; ok {
			t.Errorf("upstream saw hop-by-hop %s: %q", k, v)
		}
	}
	if got := r.Header.Get("Te"); got != "trailers" {
		t.Errorf("upstream saw TE %q, want only \"trailers\"", got)
	}
	if r.Header.Get("X-Keep") != "yes" || r.Header.Get("Proxy-Authorization") == "" {
		t.Errorf("end-to-end fields lost: %v", r.Header)
	}
	for _, k := range []string{"X-Up-Hop", "Keep-Alive", "Upgrade"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("client saw hop-by-hop %s: %q", k, v)
		}
	}
	if resp.Header.Get("X-End-To-End") != "kept" {
		t.Errorf("client lost an end-to-end field: %v", resp.Header)
	}
}

func TestAn200WithUpgradeHeaderIsANormalResponse(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		io.WriteString(w, "plain body")
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.rawConn(t)
	br := bufio.NewReader(c)
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: svc\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: svc\r\n\r\n",
	} {
		resp, body := roundTrip(t, c, br, req, "GET")
		if resp.StatusCode != 200 || body != "plain body" || resp.Header.Get("Upgrade") != "" {
			t.Fatalf("got %d %q %v, want a plain 200 without Upgrade", resp.StatusCode, body, resp.Header)
		}
	}
}

func TestA101ToARequestWithoutUpgradeIs502(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		w.WriteHeader(http.StatusSwitchingProtocols)
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.rawConn(t)
	resp, body := roundTrip(t, c, bufio.NewReader(c), "GET / HTTP/1.1\r\nHost: svc\r\n\r\n", "GET")
	if resp.StatusCode != 502 || !strings.Contains(body, "asked for no upgrade") {
		t.Fatalf("got %d %q, want 502", resp.StatusCode, body)
	}
}

func TestChunkedUploadAndDownloadOfMiBsArriveExactly(t *testing.T) {
	const size = 3<<20 + 12345
	payload := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "%d %x %v", n, h.Sum(nil), r.TransferEncoding)
			return
		}
		// Unknown length: net/http sends it chunked.
		w.Header().Set("Trailer", "X-Sum")
		f := w.(http.Flusher)
		for off := 0; off < len(payload); off += 100000 {
			w.Write(payload[off:min(off+100000, len(payload))])
			f.Flush()
		}
		s := sha256.Sum256(payload)
		w.Header().Set("X-Sum", hex.EncodeToString(s[:]))
	})
	rt := &rrRouter{addrs: []netip.AddrPort{up.addr}}
	p := startProxy(t, Config{Router: rt})
	cl := p.client(t)

	t.Run("a chunked upload of unknown length arrives byte for byte", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for off := 0; off < len(payload); off += 77777 {
				pw.Write(payload[off:min(off+77777, len(payload))])
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", "http://svc/upload", pr)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s := sha256.Sum256(payload)
		want := fmt.Sprintf("%d %x [chunked]", size, s)
		if string(b) != want {
			t.Fatalf("upstream saw %q, want %q", b, want)
		}
	})
	t.Run("a Content-Length upload larger than the buffers arrives byte for byte", func(t *testing.T) {
		resp, err := cl.Post("http://svc/upload", "application/octet-stream", bytes.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s := sha256.Sum256(payload)
		if want := fmt.Sprintf("%d %x []", size, s); string(b) != want {
			t.Fatalf("upstream saw %q, want %q", b, want)
		}
	})
	t.Run("a chunked download arrives byte for byte with its trailer", func(t *testing.T) {
		resp, err := cl.Get("http://svc/download")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, payload) {
			t.Fatalf("got %d bytes, want the %d sent", len(b), len(payload))
		}
		s := sha256.Sum256(payload)
		if got := resp.Trailer.Get("X-Sum"); got != hex.EncodeToString(s[:]) {
			t.Fatalf("trailer X-Sum %q, want the checksum", got)
		}
	})
	res := rt.waitResults(t, 3)
	if res[0].ReqBytes != size || res[2].RespBytes != size {
		t.Errorf("byte counts %d/%d, want %d", res[0].ReqBytes, res[2].RespBytes, size)
	}
	if p.dials.Load() != 1 {
		t.Errorf("%d client connections, want 1", p.dials.Load())
	}
}

func TestRequestTrailersReachTheUpstream(t *testing.T) {
	got := make(chan string, 1)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got <- r.Trailer.Get("X-Checksum")
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.rawConn(t)
	resp, _ := roundTrip(t, c, bufio.NewReader(c), "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"+
		"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n", "POST")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if v := <-got; v != "abc" {
		t.Fatalf("upstream trailer %q, want abc", v)
	}
}

func TestExpect100ContinueIsRelayedFromTheUpstream(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body) // reading makes net/http send 100 Continue
		w.Write(b)
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	var got100 bool
	req, _ := http.NewRequest("PUT", "http://svc/", strings.NewReader("the body"))
	req.Header.Set("Expect", "100-continue")
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{Got100Continue: func() { got100 = true }}))
	resp, err := p.client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !got100 || string(b) != "the body" {
		t.Fatalf("got100=%v body %q, want 100 Continue then the echoed body", got100, b)
	}
}

func TestResponsesWithoutBodiesKeepTheConnectionInSync(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.WriteHeader(304)
		default:
			w.Header().Set("Content-Length", "11")
			io.WriteString(w, "hello world")
		}
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.rawConn(t)
	br := bufio.NewReader(c)
	tests := []struct {
		name, raw, method string
		status            int
		cl                string
	}{
		{"HEAD gets the length of the GET and no body", "HEAD / HTTP/1.1\r\nHost: svc\r\n\r\n", "HEAD", 200, "11"},
		{"204 has no body", "GET /204 HTTP/1.1\r\nHost: svc\r\n\r\n", "GET", 204, ""},
		{"304 has no body", "GET /304 HTTP/1.1\r\nHost: svc\r\n\r\n", "GET", 304, ""},
		{"a GET after them still parses", "GET / HTTP/1.1\r\nHost: svc\r\n\r\n", "GET", 200, "11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := roundTrip(t, c, br, tt.raw, tt.method)
			if resp.StatusCode != tt.status || resp.Header.Get("Content-Length") != tt.cl {
				t.Fatalf("got %d CL %q, want %d CL %q", resp.StatusCode, resp.Header.Get("Content-Length"), tt.status, tt.cl)
			}
			if tt.method == "GET" && tt.status == 200 && body != "hello world" {
				t.Fatalf("body %q", body)
			}
		})
	}
}

func TestPipelinedRequestsAreAnsweredInOrder(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) })
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.rawConn(t)
	io.WriteString(c, "GET /one HTTP/1.1\r\nHost: svc\r\n\r\nPOST /two HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: svc\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []string{"/one", "/two", "/three"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Fatalf("got %q, want %q", b, want)
		}
	}
}
