package proxy

import (
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/proxy/h2"
	"github.com/detourmesh/detour/proxy/http1"
	"github.com/detourmesh/detour/proxy/tap"
)

// benchRoute is the per-request work the proxy adds to the HTTP/2 engine's: route one outbound
// gRPC call and record its end (balancer, metrics, the connection's endpoint count, and the tap
// when one watches).
func benchRoute(b *testing.B, watch, record bool) {
	s, err := discovery.Parse("discovery.yaml", []byte(twoEndpoints))
	if err != nil {
		b.Fatal(err)
	}
	p := New(Config{Logger: slog.New(slog.DiscardHandler)})
	p.routes.update(s)
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	info := &connInfo{client: netip.MustParseAddrPort("198.18.0.2:40000")}
	head := &h2.Head{Method: "POST", Scheme: "http", Authority: "198.19.0.10:80", Path: "/stockkube.v1.StockData/GetQuote",
		Header: []hpack.HeaderField{{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"}},
		Conn:   &h2.ConnInfo{}}
	if record {
		head.Conn.Owner = info
	}
	if watch {
		w := p.tap.Watch(tap.Filter{})
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-w.C:
				case <-stop:
					return
				}
			}
		}()
	}
	res := h2.Result{Status: 200, GRPCStatus: 0, Duration: time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		r, err := p.routeH2Outbound(vip, head)
		if err != nil {
			b.Fatal(err)
		}
		res.Addr = r.Addr
		r.Done(res)
	}
}

func BenchmarkRouteH2Outbound(b *testing.B) {
	b.Run("tap idle", func(b *testing.B) { benchRoute(b, false, true) })
	// Without the connection's record, so without counting its requests per endpoint.
	b.Run("tap idle, no connection record", func(b *testing.B) { benchRoute(b, false, false) })
	b.Run("tap watched", func(b *testing.B) { benchRoute(b, true, true) })
}

// BenchmarkRouteH1Outbound is benchRoute for an HTTP/1.1 request: pick, budget, route policy
// (its retrier and timeout), and the end recorded.
func BenchmarkRouteH1Outbound(b *testing.B) {
	s, err := discovery.Parse("discovery.yaml", []byte(twoEndpoints))
	if err != nil {
		b.Fatal(err)
	}
	p := New(Config{Logger: slog.New(slog.DiscardHandler)})
	p.routes.update(s)
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	req := httptest.NewRequest("GET", "http://198.19.0.10/quotes/ACME", nil)
	res := http1.Result{Status: 200, Duration: time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		r, err := p.routeH1Outbound(vip, req)
		if err != nil {
			b.Fatal(err)
		}
		res.Addr = r.Addr
		r.Done(res)
	}
}
