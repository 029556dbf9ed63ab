package proxy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/proxy/balance"
)

func mustParse(t *testing.T, yaml string) *discovery.Snapshot {
	t.Helper()
	s, err := discovery.Parse("discovery.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const twoEndpoints = `trustDomain: cluster.local
services:
  - name: stockdata.stocks
    addresses: ["198.19.0.10:80"]
    endpoints:
      - address: 198.18.0.11:8080
      - address: 198.18.0.12:8080
`

func TestReloadKeepsTheBalancerAndItsLoad(t *testing.T) {
	r := newRoutes(balance.Options{})
	r.update(mustParse(t, twoEndpoints))
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	before := r.lookup(vip)
	if before == nil {
		t.Fatal("the VIP is not routed")
	}
	pick, err := before.balancer.Pick()
	if err != nil {
		t.Fatal(err)
	}
	r.update(mustParse(t, twoEndpoints+"      - address: 198.18.0.13:8080\n"))
	after := r.lookup(vip)
	if after.balancer != before.balancer {
		t.Fatal("a reload replaced the service's balancer, losing its statistics")
	}
	inflight := map[string]int64{}
	for _, e := range r.doc().Services[0].Endpoints {
		inflight[e.Address] = e.InFlight
	}
	if len(inflight) != 3 || inflight[pick.Endpoint.Addr.String()] != 1 {
		t.Fatalf("after the reload: %v, want 3 endpoints and the request in flight still counted on %s", inflight, pick.Endpoint.Addr)
	}
	pick.Done(nil, 0)
	if r.lookup(netip.MustParseAddrPort("198.19.0.11:80")) != nil {
		t.Fatal("an unknown destination was routed")
	}
}

func TestRoundRobinRequestedByDiscoveryIsUsed(t *testing.T) {
	r := newRoutes(balance.Options{})
	r.update(mustParse(t, twoEndpoints))
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	p2c := r.lookup(vip).balancer
	r.update(mustParse(t, strings.Replace(twoEndpoints, "    endpoints:", "    balancer: round-robin\n    endpoints:", 1)))
	rr := r.lookup(vip).balancer
	if _, ok := rr.(*balance.RoundRobin); !ok || rr == p2c {
		t.Fatalf("balancer after asking for round-robin: %T", rr)
	}
}

func TestRefuse(t *testing.T) {
	p := New(Config{OutboundPort: 7140, InboundPort: 7143, AdminPort: 7190})
	tests := []struct {
		name, direction string
		dst             string
		refused         bool
	}{
		{"outbound to another host is served", "outbound", "198.18.0.9:80", false},
		{"outbound to the proxy's own port on loopback loops", "outbound", "127.0.0.1:7140", true},
		{"inbound for another host is no open relay", "inbound", "198.18.0.9:8080", true},
		{"inbound to the app on loopback is served", "inbound", "127.0.0.1:8080", false},
		{"inbound to the inbound port itself loops", "inbound", "127.0.0.1:7143", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.refuse(tt.direction, netip.MustParseAddrPort(tt.dst))
			if (err != nil) != tt.refused {
				t.Fatalf("refuse(%s, %s) = %v, want refused %v", tt.direction, tt.dst, err, tt.refused)
			}
		})
	}
}

func TestInboundGoesToTheAddressDialled(t *testing.T) {
	p := New(Config{InboundLoopbackPorts: []uint16{6379}})
	for _, tt := range []struct{ dst, want string }{
		{"198.18.0.9:8080", "198.18.0.9:8080"},
		{"[fd00:de70::9]:8080", "[fd00:de70::9]:8080"},
		{"198.18.0.9:6379", "127.0.0.1:6379"},
		{"[fd00:de70::9]:6379", "127.0.0.1:6379"},
	} {
		if got := p.appAddr(netip.MustParseAddrPort(tt.dst)); got.String() != tt.want {
			t.Errorf("inbound to %s goes to %s, want %s", tt.dst, got, tt.want)
		}
	}
}

func TestUpdateReportsEndpointsWhosePeerChanged(t *testing.T) {
	const meshed = `trustDomain: cluster.local
services:
  - name: stockdata.stocks
    addresses: ["198.19.0.10:80"]
    endpoints:
      - address: 198.18.0.11:8080
        identity: spiffe://cluster.local/ns/stocks/sa/stockdata
      - address: 198.18.0.12:8080
        identity: spiffe://cluster.local/ns/stocks/sa/stockdata
      - address: 198.18.0.13:8080
`
	r := newRoutes(balance.Options{})
	if changed, _ := r.update(mustParse(t, meshed)); len(changed) != 0 {
		t.Fatalf("the first snapshot reported changes: %v", changed)
	}
	if changed, _ := r.update(mustParse(t, meshed)); len(changed) != 0 {
		t.Fatalf("the same snapshot again reported changes: %v", changed)
	}
	next := strings.Replace(meshed, "      - address: 198.18.0.11:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/stockdata\n",
		"      - address: 198.18.0.11:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/other\n", 1)
	next = strings.Replace(next, "      - address: 198.18.0.12:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/stockdata\n", "      - address: 198.18.0.12:8080\n", 1)
	next = strings.Replace(next, "      - address: 198.18.0.13:8080\n", "      - address: 198.18.0.13:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/stockdata\n", 1)
	changed, reidentified := r.update(mustParse(t, next))
	slices.SortFunc(changed, netip.AddrPort.Compare)
	if len(reidentified) != 1 || reidentified[0] != netip.MustParseAddrPort("198.18.0.11:8080") {
		t.Errorf("reidentified %v, want only the endpoint with another identity", reidentified)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.11:8080"), netip.MustParseAddrPort("198.18.0.12:8080"), netip.MustParseAddrPort("198.18.0.13:8080")}
	if !slices.Equal(changed, want) {
		t.Fatalf("changed %v, want %v (another identity, no longer meshed, newly meshed)", changed, want)
	}
}
