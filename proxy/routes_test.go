package proxy

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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
	r := newRoutes(balance.Options{}, "")
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
	for _, e := range r.doc(false).Services[0].Endpoints {
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
	r := newRoutes(balance.Options{}, "")
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
	r := newRoutes(balance.Options{}, "")
	if changed, _, _ := r.update(mustParse(t, meshed)); len(changed) != 0 {
		t.Fatalf("the first snapshot reported changes: %v", changed)
	}
	if changed, _, _ := r.update(mustParse(t, meshed)); len(changed) != 0 {
		t.Fatalf("the same snapshot again reported changes: %v", changed)
	}
	next := strings.Replace(meshed, "      - address: 198.18.0.11:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/stockdata\n",
		"      - address: 198.18.0.11:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/other\n", 1)
	next = strings.Replace(next, "      - address: 198.18.0.12:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/stockdata\n", "      - address: 198.18.0.12:8080\n", 1)
	next = strings.Replace(next, "      - address: 198.18.0.13:8080\n", "      - address: 198.18.0.13:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/stockdata\n", 1)
	changed, reidentified, _ := r.update(mustParse(t, next))
	slices.SortFunc(changed, netip.AddrPort.Compare)
	if len(reidentified) != 1 || reidentified[0] != netip.MustParseAddrPort("198.18.0.11:8080") {
		t.Errorf("reidentified %v, want only the endpoint with another identity", reidentified)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.11:8080"), netip.MustParseAddrPort("198.18.0.12:8080"), netip.MustParseAddrPort("198.18.0.13:8080")}
	if !slices.Equal(changed, want) {
		t.Fatalf("changed %v, want %v (another identity, no longer meshed, newly meshed)", changed, want)
	}
}

// unresolve is snap with the named services' endpoints unknown, as the controller's client
// shows the services the proxy has not used.
func unresolve(snap *discovery.Snapshot, names ...string) *discovery.Snapshot {
	var entries []*discovery.Service
	for _, n := range names {
		svc, _ := snap.Service(n)
		e := *svc
		e.Endpoints, e.Unresolved = nil, true
		entries = append(entries, &e)
	}
	return snap.WithServices(snap.Revision(), entries...)
}

const twoServices = twoEndpoints + `  - name: other.ns
    addresses: ["198.19.0.20:80"]
    protocol: http2
    endpoints:
      - address: 198.18.0.21:8080
`

func TestOnlyResolvedServicesGetABalancer(t *testing.T) {
	r := newRoutes(balance.Options{}, "")
	full := mustParse(t, twoServices)
	_, _, fresh := r.update(unresolve(full, "stockdata.stocks", "other.ns"))
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	if svc, entry := r.current.Load().find(vip); svc != nil || entry == nil || entry.Name != "stockdata.stocks" {
		t.Fatalf("an unresolved service: find = %v, %v; want no service and its entry", svc, entry)
	}
	if len(fresh) != 0 || len(r.balancers) != 0 || len(r.doc(false).Services) != 0 || r.doc(false).Unresolved != 2 {
		t.Fatalf("unresolved services got balancers %v or fresh %v, doc %+v", r.balancers, fresh, r.doc(false))
	}
	if all := r.doc(true); len(all.Services) != 2 || !all.Services[0].Unresolved {
		t.Errorf("/debug/endpoints?all: %+v", all)
	}
	resolved := unresolve(full, "other.ns")
	_, _, fresh = r.update(resolved)
	if svc := r.lookup(vip); svc == nil || svc.balancer == nil || len(fresh) != 1 || fresh[0].Name != "stockdata.stocks" {
		t.Fatalf("after resolving stockdata: %v, fresh %v", svc, fresh)
	}
	before := r.lookup(vip)
	// other.ns resolves; stockdata's *Service is unchanged, so it keeps its service and balancer.
	_, _, fresh = r.update(resolved.WithServices("r", full.Services()[1]))
	if r.lookup(vip) != before || len(fresh) != 1 || fresh[0].Name != "other.ns" {
		t.Errorf("an update of other.ns touched stockdata (fresh %v)", fresh)
	}
	// Unsubscribed: the balancer goes.
	r.update(unresolve(full, "stockdata.stocks", "other.ns"))
	if len(r.balancers) != 0 {
		t.Errorf("balancers of unresolved services kept: %v", r.balancers)
	}
}

// fakeSubscriber is a discovery.Subscriber that records uses and resolves on use when told to.
type fakeSubscriber struct {
	mu       sync.Mutex
	uses     map[string]int
	onUse    func(name string)
	released int
}

func (f *fakeSubscriber) Watch(context.Context) <-chan *discovery.Snapshot { return nil }
func (f *fakeSubscriber) Use(name string) func() {
	f.mu.Lock()
	f.uses[name]++
	on := f.onUse
	f.mu.Unlock()
	if on != nil {
		go on(name)
	}
	return func() { f.mu.Lock(); f.released++; f.mu.Unlock() }
}

func TestTheFirstConnectionToAServiceWaitsForItsEndpoints(t *testing.T) {
	full := mustParse(t, twoServices)
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	sub := &fakeSubscriber{uses: map[string]int{}}
	p := New(Config{Discovery: sub, ResolveTimeout: time.Hour})
	p.update(unresolve(full, "stockdata.stocks", "other.ns"))
	sub.onUse = func(name string) { p.update(unresolve(full, "other.ns")) } // the controller answers

	svc, release := p.outboundService(context.Background(), vip)
	if svc == nil || svc.balancer == nil || svc.Name != "stockdata.stocks" {
		t.Fatalf("after the answer: %+v", svc)
	}
	if sub.uses["stockdata.stocks"] != 1 || sub.released != 0 {
		t.Errorf("uses %v, released %d", sub.uses, sub.released)
	}
	release()
	if sub.released != 1 {
		t.Errorf("release did not release the use")
	}
	// Resolved, a connection does not wait, but still holds the service in use.
	sub.onUse = nil
	svc, release = p.outboundService(context.Background(), vip)
	if svc == nil || svc.balancer == nil || sub.uses["stockdata.stocks"] != 2 {
		t.Fatalf("a second connection: %+v, uses %v", svc, sub.uses)
	}
	release()
	// A destination no service has is not a use.
	if svc, release := p.outboundService(context.Background(), netip.MustParseAddrPort("198.19.9.9:80")); svc != nil || release != nil {
		t.Errorf("an unknown destination: %v", svc)
	}
}

func TestAServiceWhoseEndpointsNeverComeFailsItsRequests(t *testing.T) {
	full := mustParse(t, twoServices)
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	sub := &fakeSubscriber{uses: map[string]int{}}
	p := New(Config{Discovery: sub, ResolveTimeout: 20 * time.Millisecond})
	p.update(unresolve(full, "stockdata.stocks", "other.ns"))
	svc, release := p.outboundService(context.Background(), vip)
	defer release()
	if svc == nil || svc.balancer != nil || svc.Name != "stockdata.stocks" {
		t.Fatalf("after the timeout: %+v, want the service without a balancer", svc)
	}
	// Never its original destination: the request fails, naming why.
	if _, _, err := p.pickOutbound(vip); err == nil || !strings.Contains(err.Error(), "not known yet") {
		t.Errorf("a request: %v", err)
	}
}

// TestZoneHintsNarrowThePicks: a proxy in zone-a balances over the endpoints hinted for zone-a
// only; once one endpoint loses its hints the service is balanced over all of them again.
func TestZoneHintsNarrowThePicks(t *testing.T) {
	const hinted = `trustDomain: cluster.local
services:
  - name: stockdata.stocks
    addresses: ["198.19.0.10:80"]
    endpoints:
      - {address: 198.18.0.11:8080, zone: zone-a, forZones: [zone-a]}
      - {address: 198.18.0.12:8080, zone: zone-b, forZones: [zone-b]}
      - {address: 198.18.0.13:8080, zone: zone-a, forZones: [zone-a]}
`
	picked := func(r *routes) map[string]int {
		t.Helper()
		got := map[string]int{}
		b := r.lookup(netip.MustParseAddrPort("198.19.0.10:80")).balancer
		for range 300 {
			p, err := b.Pick()
			if err != nil {
				t.Fatal(err)
			}
			got[p.Endpoint.Addr.String()]++
			p.Done(nil, time.Millisecond)
		}
		return got
	}
	r := newRoutes(balance.Options{}, "zone-a")
	r.update(mustParse(t, hinted))
	if got := picked(r); len(got) != 2 || got["198.18.0.12:8080"] != 0 {
		t.Errorf("zone-a with every endpoint hinted picked %v, want only the two zone-a endpoints", got)
	}
	r.update(mustParse(t, strings.Replace(hinted, ", forZones: [zone-b]", "", 1)))
	if got := picked(r); len(got) != 3 {
		t.Errorf("with one endpoint unhinted picked %v, want all three", got)
	}
	if got := picked(func() *routes { r := newRoutes(balance.Options{}, ""); r.update(mustParse(t, hinted)); return r }()); len(got) != 3 {
		t.Errorf("a proxy with no zone picked %v, want all three", got)
	}
}
