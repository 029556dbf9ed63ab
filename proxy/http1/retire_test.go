package http1

import (
	"io"
	"net/http"
	"net/netip"
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
