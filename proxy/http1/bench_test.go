package http1

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"testing"
)

// BenchmarkKeepAliveGET measures one keep-alive GET of a 5-byte body over loopback: directly to
// the upstream, through this engine, and through net/http's ReverseProxy for comparison.
// allocs/op count the whole process (client, proxy and upstream); compare against direct.
//
//	go test -run '^$' -bench KeepAliveGET -benchmem ./proxy/http1/
func BenchmarkKeepAliveGET(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	b.Cleanup(up.Close)
	upAddr := netip.MustParseAddrPort(up.Listener.Addr().String())

	serve := func(b *testing.B, srv *Server) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ln.Close(); srv.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go srv.ServeConn(context.Background(), c, svcDst)
			}
		}()
		return ln.Addr().String()
	}
	run := func(b *testing.B, target string, parallel bool) {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", target)
			},
			MaxIdleConnsPerHost: 64,
		}
		b.Cleanup(tr.CloseIdleConnections)
		cl := &http.Client{Transport: tr}
		get := func(b *testing.B) {
			resp, err := cl.Get("http://svc.example/")
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		get(b)
		b.ReportAllocs()
		b.ResetTimer()
		if !parallel {
			for b.Loop() {
				get(b)
			}
			return
		}
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get(b)
			}
		})
	}
	detour := func(b *testing.B) string {
		return serve(b, NewServer(Config{Router: RouterFunc(func(netip.AddrPort, *http.Request) (Route, error) {
			return Route{Addr: upAddr, Done: func(Result) {}}, nil
		})}))
	}
	reverseProxy := func(b *testing.B) string {
		u, _ := url.Parse(up.URL)
		rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
		}}
		s := httptest.NewServer(rp)
		b.Cleanup(s.Close)
		return s.Listener.Addr().String()
	}
	for _, par := range []bool{false, true} {
		name := "sequential"
		if par {
			name = "parallel"
		}
		b.Run(name+"/direct", func(b *testing.B) { run(b, up.Listener.Addr().String(), par) })
		b.Run(name+"/detour", func(b *testing.B) { run(b, detour(b), par) })
		b.Run(name+"/reverseproxy", func(b *testing.B) { run(b, reverseProxy(b), par) })
	}
}
