package proxy

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestConnectionsCountTheirRequestsPerEndpointBoundedly(t *testing.T) {
	c := &connInfo{}
	a := netip.MustParseAddrPort("198.18.0.3:8080")
	c.sentTo(a)
	c.sentTo(a)
	for i := range maxConnEndpoints + 5 {
		c.sentTo(netip.AddrPortFrom(netip.MustParseAddr("198.18.1.1"), uint16(1000+i)))
	}
	docs := c.endpointDocs()
	if len(docs) != maxConnEndpoints+1 {
		t.Fatalf("%d entries, want %d endpoints and one \"other\"", len(docs), maxConnEndpoints)
	}
	var total int64
	for _, d := range docs {
		total += d.Requests
		if d.Address == a.String() && d.Requests != 2 {
			t.Errorf("%s: %d requests, want 2", a, d.Requests)
		}
	}
	if total != maxConnEndpoints+5+2 {
		t.Errorf("%d requests counted, want every one of %d", total, maxConnEndpoints+5+2)
	}
	if last := docs[len(docs)-1]; last.Address != "other" || last.Requests != 6 {
		t.Errorf("last entry %+v, want the 6 requests beyond the bound as other", last)
	}
}

func TestClosedConnectionsAreRememberedInARing(t *testing.T) {
	tab := newConnTable()
	client := netip.MustParseAddrPort("198.18.0.2:40000")
	open := tab.add(nil, "outbound", client, netip.MustParseAddrPort("198.19.0.10:80"), "")
	for i := range recentClosed + 10 {
		c := tab.add(nil, "outbound", client, netip.AddrPortFrom(netip.MustParseAddr("198.18.255.254"), uint16(i+1)), "")
		c.setProtocol("opaque")
		tab.remove(c)
	}
	if docs := tab.doc(false); len(docs) != 1 || docs[0].ID != open.doc.ID || docs[0].Closed != nil {
		t.Fatalf("without closed=1: %+v, want the one open connection", docs)
	}
	docs := tab.doc(true)
	if len(docs) != recentClosed+1 {
		t.Fatalf("%d connections, want the open one and the last %d closed", len(docs), recentClosed)
	}
	last := docs[len(docs)-1]
	if last.Closed == nil || last.Dst != fmt.Sprintf("198.18.255.254:%d", recentClosed+10) || last.Protocol != "opaque" {
		t.Fatalf("the newest closed connection: %+v", last)
	}
	if first := docs[1]; first.Dst != "198.18.255.254:11" {
		t.Fatalf("the oldest remembered: %s, want the 11th (the first 10 fell out of the ring)", first.Dst)
	}
}
