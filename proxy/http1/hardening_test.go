package http1

import (
	"bufio"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestMalformedAndSmugglingRequestsAreRefusedAndTheConnectionClosed(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}, MaxHeaderBytes: 4096})
	tests := []struct {
		name   string
		raw    string
		status int
		reason string
	}{
		{"both Content-Length and Transfer-Encoding is refused",
			"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "both Content-Length and Transfer-Encoding"},
		{"Transfer-Encoding before Content-Length is refused too",
			"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, "both Content-Length and Transfer-Encoding"},
		{"differing duplicate Content-Length is refused",
			"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, "differing Content-Length"},
		{"a Content-Length list is refused",
			"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5, 5\r\n\r\nhello", 400, "invalid Content-Length"},
		{"a signed Content-Length is refused",
			"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: +5\r\n\r\nhello", 400, "invalid Content-Length"},
		{"a double chunked Transfer-Encoding is refused",
			"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501, "only chunked"},
		{"two Transfer-Encoding fields are refused",
			"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, "only chunked"},
		{"an obfuscated Transfer-Encoding is refused",
			"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501, "only chunked"},
		{"Transfer-Encoding in HTTP/1.0 is refused",
			"POST / HTTP/1.0\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "HTTP/1.0"},
		{"a space before the colon is refused",
			"GET / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding : chunked\r\n\r\n", 400, "invalid header field name"},
		{"a NUL in a header value is refused",
			"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\x00b\r\n\r\n", 400, "malformed header"},
		{"a bare CR in a header value is refused",
			"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\rb\r\n\r\n", 400, "malformed header"},
		{"a missing Host in HTTP/1.1 is refused",
			"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400, "missing Host"},
		{"two Host fields are refused",
			"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"},
		{"a malformed Host is refused",
			"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "malformed Host"},
		{"a request line with too many spaces is refused",
			"GET / x HTTP/1.1\r\nHost: svc\r\n\r\n", 400, "malformed HTTP version"},
		{"garbage is refused",
			"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400, "malformed request line"},
		{"HTTP/2 over this engine is refused",
			"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "unsupported HTTP version"},
		{"CONNECT is refused",
			"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501, "CONNECT"},
		{"a head over MaxHeaderBytes is refused with 431",
			"GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + strings.Repeat("a", 9000) + "\r\n\r\n", 431, "too large"},
		{"a request line over MaxHeaderBytes is refused with 431",
			"GET /" + strings.Repeat("a", 9000) + " HTTP/1.1\r\nHost: svc\r\n\r\n", 431, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := up.hits.Load()
			c := p.rawConn(t)
			br := bufio.NewReader(c)
			go io.WriteString(c, tt.raw) // may fail once the proxy closes: the answer is what counts
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("reading response: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.reason) {
				t.Fatalf("got %d %q, want %d mentioning %q", resp.StatusCode, b, tt.status, tt.reason)
			}
			if !resp.Close {
				t.Error("response does not say Connection: close")
			}
			expectClosed(t, br)
			if up.hits.Load() != before {
				t.Error("the refused request reached the upstream")
			}
		})
	}
}

func TestIdenticalDuplicateContentLengthIsAccepted(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.rawConn(t)
	resp, body := roundTrip(t, c, bufio.NewReader(c), "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "POST")
	if resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if got := up.lastRequest(t).Header["Content-Length"]; len(got) != 1 || got[0] != "5" {
		t.Fatalf("upstream saw Content-Length %q, want one 5", got)
	}
}

func TestAMalformedChunkedBodyIs400AndNeverCompletesUpstream(t *testing.T) {
	got := make(chan error, 1)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		got <- err
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.rawConn(t)
	br := bufio.NewReader(c)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 400 {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("upstream read a complete body")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream request not cancelled")
	}
}

func TestSlowAndIdleClientsAreDisconnected(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}},
		ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	tests := []struct{ name, raw string }{
		{"a head that never ends (slowloris) is cut off", "GET / HTTP/1.1\r\nHost: svc\r\nX-Slow: "},
		{"a connection that never sends a request is closed", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := p.rawConn(t)
			io.WriteString(c, tt.raw)
			expectClosed(t, bufio.NewReader(c))
		})
	}
	t.Run("an idle keep-alive connection is closed after its last response", func(t *testing.T) {
		c := p.rawConn(t)
		br := bufio.NewReader(c)
		if resp, _ := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n", "GET"); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
		expectClosed(t, br)
	})
}

func TestHTTP10ClientsGetOneRequestPerConnection(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "x") // small: net/http sets Content-Length
		if r.URL.Path == "/stream" {
			w.(http.Flusher).Flush()
			io.WriteString(w, "y")
		}
	})
	p := startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	for _, path := range []string{"/", "/stream"} {
		c := p.rawConn(t)
		br := bufio.NewReader(c)
		io.WriteString(c, "GET "+path+" HTTP/1.0\r\n\r\n")
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if len(resp.TransferEncoding) != 0 || !resp.Close || !strings.HasPrefix(string(b), "x") {
			t.Fatalf("%s: TE %v close %v body %q, want an unchunked body and a close", path, resp.TransferEncoding, resp.Close, b)
		}
		if h := up.lastRequest(t).Host; h != svcDst.String() {
			t.Errorf("HTTP/1.0 request without Host reached the upstream as Host %q, want the original destination", h)
		}
	}
}
