package discovery

import (
	"context"
	"net/netip"
	"slices"
	"testing"
)

const twoServices = "services:\n" +
	"  - name: a.b\n    addresses: [\"198.19.0.1:80\"]\n    endpoints:\n      - address: 198.18.0.1:8080\n" +
	"  - name: c.d\n    addresses: [\"198.19.0.2:80\", \"c.d:80\"]\n    endpoints:\n      - address: 198.18.0.2:8080\n"

func TestAReloadKeepsThePointersOfUnchangedServices(t *testing.T) {
	path, f, _ := newTestFile(t, twoServices)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := f.Watch(ctx)
	first := <-ch
	writeFile(t, path, twoServices+"      - address: 198.18.0.3:8080\n")
	var next *Snapshot
	for next = range ch {
		if len(next.Services()[1].Endpoints) == 2 {
			break
		}
	}
	if next.Services()[0] != first.Services()[0] {
		t.Errorf("the unchanged service a.b is a new *Service after the reload")
	}
	if next.Services()[1] == first.Services()[1] {
		t.Errorf("the changed service c.d kept its old *Service")
	}
}

func TestWithServicesSharesTheIndexWhenOnlyEndpointsChange(t *testing.T) {
	s, err := Parse("f", []byte(twoServices))
	if err != nil {
		t.Fatal(err)
	}
	cd := *s.Services()[1]
	cd.Endpoints = nil
	got := s.WithServices("r2", &cd)
	if got.index != s.index {
		t.Errorf("an endpoint change rebuilt the index")
	}
	if svc, ok := got.LookupAuthority("c.d:80"); !ok || svc != &cd || len(svc.Endpoints) != 0 {
		t.Errorf("the replacement is not what the authority selects")
	}
	if svc, _ := s.Lookup(netip.MustParseAddrPort("198.19.0.2:80")); len(svc.Endpoints) != 1 {
		t.Errorf("WithServices changed the snapshot it was called on")
	}
	if got.Revision() != "r2" || got.Services()[0] != s.Services()[0] {
		t.Errorf("revision %q; the untouched service must stay the same pointer", got.Revision())
	}

	moved := cd
	moved.Addresses = []netip.AddrPort{netip.MustParseAddrPort("198.19.0.9:80")}
	added := &Service{Name: "e.f", Addresses: []netip.AddrPort{netip.MustParseAddrPort("198.19.0.3:80")}}
	got = s.WithServices("r3", &moved, added)
	if got.index == s.index {
		t.Fatalf("a change of addresses kept the old index")
	}
	for dst, want := range map[string]string{"198.19.0.9:80": "c.d", "198.19.0.3:80": "e.f"} {
		if svc, ok := got.Lookup(netip.MustParseAddrPort(dst)); !ok || svc.Name != want {
			t.Errorf("%s does not select %s", dst, want)
		}
	}
	if _, ok := got.Lookup(netip.MustParseAddrPort("198.19.0.2:80")); ok {
		t.Errorf("the old address still selects a service")
	}
	if svc, ok := got.Service("e.f"); !ok || svc != added {
		t.Errorf("Service(e.f) = %v", svc)
	}
}

func TestServiceEquality(t *testing.T) {
	s, _ := Parse("f", []byte(twoServices))
	a := *s.Services()[0]
	b := a
	b.Endpoints = append([]Endpoint(nil), a.Endpoints...)
	if !a.Equal(&b) || !a.EqualEntry(&b) {
		t.Errorf("copies are not equal")
	}
	b.Endpoints[0].Zone = "z"
	if a.Equal(&b) || !a.EqualEntry(&b) {
		t.Errorf("an endpoint change: Equal %v EqualEntry %v, want false, true", a.Equal(&b), a.EqualEntry(&b))
	}
	b = a
	b.Protocol = ProtocolHTTP2
	if a.EqualEntry(&b) {
		t.Errorf("a protocol change leaves the entry equal")
	}
	b = a
	b.Unresolved = true
	if a.Equal(&b) || !a.EqualEntry(&b) {
		t.Errorf("resolution is part of Equal, not of the entry")
	}
}

// TestForZone: a proxy in a zone keeps the endpoints hinted for it only while every endpoint
// is hinted and some are for its zone; otherwise, as kube-proxy does, it uses them all.
func TestForZone(t *testing.T) {
	e := func(port uint16, zones ...string) Endpoint {
		return Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.11"), port), Weight: 1, ForZones: zones}
	}
	ports := func(eps []Endpoint) []uint16 {
		var ps []uint16
		for _, x := range eps {
			ps = append(ps, x.Addr.Port())
		}
		return ps
	}
	hinted := []Endpoint{e(1, "a"), e(2, "b"), e(3, "a", "c")}
	for _, tt := range []struct {
		name string
		eps  []Endpoint
		zone string
		want []uint16
	}{
		{"hinted, zone a", hinted, "a", []uint16{1, 3}},
		{"hinted, zone c", hinted, "c", []uint16{3}},
		{"hinted, a zone nobody serves", hinted, "z", []uint16{1, 2, 3}},
		{"no zone of its own", hinted, "", []uint16{1, 2, 3}},
		{"one endpoint unhinted", []Endpoint{e(1, "a"), e(2)}, "a", []uint16{1, 2}},
		{"no hints", []Endpoint{e(1), e(2)}, "a", []uint16{1, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ports(ForZone(tt.eps, tt.zone)); !slices.Equal(got, tt.want) {
				t.Errorf("ForZone(%q) = %v, want %v", tt.zone, got, tt.want)
			}
		})
	}
}

// TestZoneHintsSurviveFileAndProto: forZones parses from the file, is written back by Format,
// and crosses the controller's protocol unchanged.
func TestZoneHintsSurviveFileAndProto(t *testing.T) {
	src := "services:\n  - name: a.b\n    addresses: ['198.19.0.10:80']\n    endpoints:\n      - address: 198.18.0.11:8080\n        zone: z1\n        forZones: [z1, z2]\n"
	snap, err := Parse("discovery.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	ep := snap.Services()[0].Endpoints[0]
	if !slices.Equal(ep.ForZones, []string{"z1", "z2"}) {
		t.Fatalf("ForZones = %v, want [z1 z2]", ep.ForZones)
	}
	again, err := Parse("formatted.yaml", Format(snap))
	if err != nil {
		t.Fatalf("%v\n%s", err, Format(snap))
	}
	if got := again.Services()[0].Endpoints[0]; !got.Equal(&ep) {
		t.Errorf("after Format and Parse: %+v, want %+v", got, ep)
	}
	back, err := EndpointFromProto(EndpointToProto(&ep), DefaultTrustDomain, "e")
	if err != nil || !back.Equal(&ep) {
		t.Errorf("after the protocol: %+v (%v), want %+v", back, err, ep)
	}
}
