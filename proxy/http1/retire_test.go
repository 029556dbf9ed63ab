package http1

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
)

// TestRetireKeepsOldConnectionsOutOfThePool: a connection to an endpoint retired while it served
// a request, and one idle in the pool, are not used for later requests.
func TestRetireKeepsOldConnectionsOutOfThePool(t *testing.T) {
	retired := make(chan struct{})
	var p *proxy
	var up *upstream
	first := true
	up = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if first { // requests are sequential: no race on first
			first = false
			p.srv.Retire(up.addr) // while this exchange holds the connection
			close(retired)
		}
		io.WriteString(w, r.RemoteAddr)
	})
	p = startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}})
	c := p.client(t)
	get := func() string {
		t.Helper()
		resp, err := c.Get("http://stockdata.stocks/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	a := get() // retired in flight
	<-retired
	b := get()
	c2 := get() // b's connection went back to the pool
	if a == b {
		t.Fatalf("the connection retired during a request served the next one (%s)", a)
	}
	if b != c2 {
		t.Fatalf("a connection dialled after Retire was not pooled: %s then %s", b, c2)
	}
	p.srv.Retire(up.addr) // now idle in the pool
	if d := get(); d == c2 {
		t.Fatalf("an idle connection retired in the pool served the next request (%s)", d)
	}
}

// TestRetireDuringADialDialsAgain: a connection whose dial spanned a Retire of its endpoint does
// not carry the request; a new one is dialled.
func TestRetireDuringADialDialsAgain(t *testing.T) {
	up := startUpstream(t, nil)
	var p *proxy
	var dials atomic.Int32
	dial := func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		if dials.Add(1) == 1 {
			p.srv.Retire(addr) // discovery changes the endpoint while this dial is under way
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr.String())
	}
	p = startProxy(t, Config{Router: &rrRouter{addrs: []netip.AddrPort{up.addr}}, Dial: dial})
	resp, err := p.client(t).Get("http://stockdata.stocks/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2: the one that spanned Retire, and one after it", n)
	}
}

func TestRetiredAddressesAreBounded(t *testing.T) {
	cfg := Config{}
	cfg.setDefaults()
	p := newPool(&cfg)
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 8080)
	}
	for i := range 3 * maxRetired {
		p.retire(addr(i))
	}
	if n := len(p.retired); n > maxRetired {
		t.Fatalf("%d retired addresses remembered, want at most %d", n, maxRetired)
	}
	if p.retired[addr(3*maxRetired-1)] != p.gen {
		t.Fatal("the most recent retirement was forgotten")
	}
}
