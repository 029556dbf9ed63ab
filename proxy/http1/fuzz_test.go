package http1

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

// fuzzUpstream answers the shapes a forwarder must frame: lengths, chunks with trailers, no
// body, an echoed body, and a real upgrade.
func fuzzUpstream(f *testing.F) netip.AddrPort {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/chunked":
			w.Header().Set("Trailer", "X-T")
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
			w.Header().Set("X-T", "t")
		case "/ws":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhi")
			brw.Flush()
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			io.Copy(c, brw)
		default:
			b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			w.Write(b)
		}
	}))
	f.Cleanup(up.Close)
	return netip.MustParseAddrPort(up.Listener.Addr().String())
}

// FuzzServeConn feeds arbitrary bytes as a client's stream. ServeConn must not panic, must
// answer or close, and must end once the client goes away: the input is written, the client
// waits briefly for answers, then closes.
func FuzzServeConn(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: svc\r\n\r\n",
		"GET /chunked HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\n\r\nHEAD /204 HTTP/1.1\r\nHost: svc\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"PUT / HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes",
		"GET http://other/abs HTTP/1.1\r\nHost: svc\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: svc\r\nX: a\r\n b\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
	} {
		f.Add([]byte(s))
	}
	addr := fuzzUpstream(f)
	srv := NewServer(Config{
		Router: RouterFunc(func(netip.AddrPort, *http.Request) (Route, error) { return Route{Addr: addr}, nil }),
		// Short timeouts keep each input fast; they are what bounds an input that stalls.
		ReadHeaderTimeout: 5 * time.Millisecond,
		IdleTimeout:       5 * time.Millisecond,
		WriteTimeout:      time.Second,
		MaxHeaderBytes:    4096,
	})
	f.Cleanup(func() { srv.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		done := make(chan error, 1)
		go func() {
			defer func() {
				if p := recover(); p != nil {
					done <- fmt.Errorf("panic: %v", p)
				}
			}()
			done <- srv.ServeConn(context.Background(), server, netip.MustParseAddrPort("198.19.0.10:80"))
		}()
		go io.Copy(io.Discard, client)
		go client.Write(data)
		select {
		case <-done:
		case <-time.After(300 * time.Millisecond):
			client.Close() // a client that stalls mid-body: hanging up must end the connection
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("ServeConn did not return after the client closed; input %q", data)
			}
		}
		client.Close()
	})
}
