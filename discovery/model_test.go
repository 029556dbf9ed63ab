package discovery

import (
	"context"
	"net/netip"
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
