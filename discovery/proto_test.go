package discovery

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/detourmesh/detour/api/discoverypb"
)

// fromWire converts what the controller would send for s (its entries and endpoints, over the
// wire) back into a snapshot, as the proxy does.
func fromWire(t *testing.T, s *Snapshot) *Snapshot {
	t.Helper()
	var services []*Service
	table := NewTable(len(s.Services()))
	for i, svc := range s.Services() {
		var got discoverypb.Service
		wire, err := proto.Marshal(EntryToProto(svc))
		if err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(wire, &got); err != nil {
			t.Fatal(err)
		}
		entry, err := EntryFromProto(&got, "services[0]")
		if err != nil {
			t.Fatalf("service %d: %v", i, err)
		}
		if err := table.Add(entry); err != nil {
			t.Fatal(err)
		}
		entry.Unresolved = false
		for j := range svc.Endpoints {
			ep, err := EndpointFromProto(EndpointToProto(&svc.Endpoints[j]), s.TrustDomain(), "endpoints[0]")
			if err != nil {
				t.Fatalf("service %d endpoint %d: %v", i, j, err)
			}
			entry.Endpoints = append(entry.Endpoints, ep)
		}
		services = append(services, entry)
	}
	return NewSnapshot(s.TrustDomain(), s.Revision(), services)
}

func TestProtoRoundTripKeepsTheSnapshot(t *testing.T) {
	data, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want, err := Parse("design.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	got := fromWire(t, want)
	if !bytes.Equal(Format(got), Format(want)) {
		t.Errorf("round trip changed the snapshot:\n got %s\nwant %s", Format(got), Format(want))
	}
	if svc, ok := got.LookupAuthority("StockWeb.Web:8080"); !ok || svc.Name != "stockweb.web" {
		t.Errorf("authority lookup after the round trip failed")
	}
	if pb := EntryToProto(want.Services()[0]); len(pb.Authorities) != 1 || pb.Authorities[0] != "stockdata.stocks:80" {
		t.Errorf("authorities are not carried in their own field: %v", pb)
	}
}

func TestProtoZeroValuesMeanWhatAnAbsentFileFieldMeans(t *testing.T) {
	svc, err := EntryFromProto(&discoverypb.Service{Name: "a.b", Addresses: []string{"198.19.0.1:80"}}, "s")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := EndpointFromProto(&discoverypb.Endpoint{Address: "198.18.0.1:8080"}, DefaultTrustDomain, "e")
	if err != nil {
		t.Fatal(err)
	}
	if svc.Protocol != ProtocolAuto || svc.Balancer != BalancerP2CEWMA || !svc.Unresolved || ep.Weight != 1 || ep.Meshed() {
		t.Errorf("protocol %v balancer %v unresolved %v weight %d meshed %v, want auto, p2c-ewma, true, 1, false",
			svc.Protocol, svc.Balancer, svc.Unresolved, ep.Weight, ep.Meshed())
	}
}

func TestProtoRefusesWhatParseRefuses(t *testing.T) {
	entry := func(edit func(*discoverypb.Service)) func() error {
		return func() error {
			pb := &discoverypb.Service{Name: "a.b", Addresses: []string{"198.19.0.1:80"}, Authorities: []string{"a.b:80"}}
			edit(pb)
			_, err := EntryFromProto(pb, "table.services[0]")
			return err
		}
	}
	endpoint := func(edit func(*discoverypb.Endpoint)) func() error {
		return func() error {
			pb := &discoverypb.Endpoint{Address: "198.18.0.1:8080", Identity: "spiffe://cluster.local/ns/a/sa/b"}
			edit(pb)
			_, err := EndpointFromProto(pb, DefaultTrustDomain, "endpoints[0]")
			return err
		}
	}
	tests := []struct {
		name string
		do   func() error
		want string
	}{
		{"a port 0 VIP", entry(func(s *discoverypb.Service) { s.Addresses[0] = "198.19.0.1:0" }), "table.services[0].addresses[0]: 198.19.0.1:0: port 0"},
		{"an authority among the VIPs", entry(func(s *discoverypb.Service) { s.Addresses[0] = "x.y:80" }), "belongs in authorities"},
		{"a VIP among the authorities", entry(func(s *discoverypb.Service) { s.Authorities[0] = "198.19.0.2:80" }), "belongs in addresses"},
		{"an authority without a port", entry(func(s *discoverypb.Service) { s.Authorities[0] = "x.y" }), "has no port"},
		{"no destination at all", entry(func(s *discoverypb.Service) { s.Addresses, s.Authorities = nil, nil }), "needs at least one address"},
		{"an upper-case name", entry(func(s *discoverypb.Service) { s.Name = "A.b" }), "not a lower-case DNS name"},
		{"an unknown protocol", entry(func(s *discoverypb.Service) { s.Protocol = "h3" }), "unknown protocol \"h3\""},
		{"an unknown balancer", entry(func(s *discoverypb.Service) { s.Balancer = "random" }), "unknown balancer"},
		{"a VIP listed twice", entry(func(s *discoverypb.Service) { s.Addresses = append(s.Addresses, "198.19.0.1:80") }), "listed twice"},
		{"an endpoint that is a name", endpoint(func(e *discoverypb.Endpoint) { e.Address = "a.b:80" }), "endpoints[0].address"},
		{"an identity of another trust domain", endpoint(func(e *discoverypb.Endpoint) { e.Identity = "spiffe://evil.example/ns/a/sa/b" }), "not \"cluster.local\""},
		{"an identity that is not a SPIFFE ID", endpoint(func(e *discoverypb.Endpoint) { e.Identity = "https://x" }), "not a SPIFFE ID"},
		{"a zone with a control character", endpoint(func(e *discoverypb.Endpoint) { e.Zone = "a\nb" }), "control character"},
		{"a zone hint twice", endpoint(func(e *discoverypb.Endpoint) { e.ForZones = []string{"a", "a"} }), "endpoints[0].for_zones: zone hint \"a\" appears twice"},
		{"the unspecified address", endpoint(func(e *discoverypb.Endpoint) { e.Address = "0.0.0.0:80" }), "unspecified"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), ProtoSource+": ") {
				t.Fatalf("err = %v, want one from %q containing %q", err, ProtoSource, tt.want)
			}
		})
	}
}

func TestTableRefusesADestinationOfTwoServices(t *testing.T) {
	tbl := NewTable(2)
	a, _ := EntryFromProto(&discoverypb.Service{Name: "a.b", Addresses: []string{"198.19.0.1:80"}}, "s")
	b, _ := EntryFromProto(&discoverypb.Service{Name: "c.d", Addresses: []string{"198.19.0.1:80"}}, "s")
	if err := tbl.Add(a); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Add(b); err == nil || !strings.Contains(err.Error(), "an address selects one service") {
		t.Fatalf("err = %v", err)
	}
	if err := tbl.Add(a); err == nil || !strings.Contains(err.Error(), "defined twice") {
		t.Fatalf("err = %v", err)
	}
}

// FuzzProtoAgreesWithParse holds the controller's conversion to the discovery file's rules:
// whatever one service with one endpoint holds, EntryFromProto and EndpointFromProto accept it
// exactly when Parse accepts the same service written as a file, and then give the same
// service.
func FuzzProtoAgreesWithParse(f *testing.F) {
	f.Add("stockdata.stocks", "198.19.0.10:80", "stockdata.stocks:80", "http2", "round-robin", "198.18.0.11:8080", "spiffe://cluster.local/ns/a/sa/b", uint32(3), "zone-a")
	f.Add("a.b", "[fd00::1]:80", "A.B.:81", "", "", "[::ffff:10.0.0.1]:1", "", uint32(0), "")
	f.Add("a.b", "1.2.3.4:0", "x:y", "h3", "rr", "a.b:80", "spiffe://cluster.local", uint32(1), "\x01")
	f.Add("a..b", "1.2.3.4:80", "1.2.3.4:80", "opaque", "p2c-ewma", "[fe80::1%eth0]:80", "spiffe://cluster.local/ns/../x", uint32(1<<31), "z")
	f.Fuzz(func(t *testing.T, name, vip, authority, protocol, balancer, epAddr, identity string, weight uint32, zone string) {
		doc := fileDoc{TrustDomain: string(DefaultTrustDomain), Services: []fileService{{
			Name: name, Addresses: []string{vip, authority}, Protocol: protocol, Balancer: balancer,
			Endpoints: []fileEndpoint{{Address: epAddr, Identity: identity, Weight: weight, Zone: zone}},
		}}}
		var b bytes.Buffer
		if err := yaml.NewEncoder(&b).Encode(doc); err != nil {
			t.Skip() // not a string YAML can carry
		}
		want, parseErr := Parse("fuzz.yaml", b.Bytes())
		// The file has one address list; the message splits it, each in the list it belongs to.
		pb := &discoverypb.Service{Name: name, Protocol: protocol, Balancer: balancer}
		for _, d := range []string{vip, authority} {
			if _, auth, err := parseDestination(d); err == nil && auth != "" {
				pb.Authorities = append(pb.Authorities, d)
			} else {
				pb.Addresses = append(pb.Addresses, d)
			}
		}
		got, err := EntryFromProto(pb, "s")
		if err == nil {
			err = NewTable(1).Add(got)
		}
		if err == nil {
			var ep Endpoint
			ep, err = EndpointFromProto(&discoverypb.Endpoint{Address: epAddr, Identity: identity, Weight: weight, Zone: zone}, DefaultTrustDomain, "e")
			got.Endpoints, got.Unresolved = []Endpoint{ep}, false
		}
		if (err == nil) != (parseErr == nil) {
			// YAML may turn a string into something else (a tag, a number): only strings that
			// reach Parse as themselves can be compared.
			var list ErrorList
			if errors.As(parseErr, &list) && strings.Contains(parseErr.Error(), "want a string") {
				t.Skip()
			}
			t.Fatalf("Parse says %v, the controller's conversion says %v\n%s", parseErr, err, b.String())
		}
		if err != nil {
			return
		}
		w := want.Services()[0]
		// Parse keeps the file's order of VIPs and authorities within their lists, as the message does.
		if !w.Equal(got) {
			t.Fatalf("Parse gives %+v, the conversion %+v", w, got)
		}
	})
}
