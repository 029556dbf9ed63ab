package discovery

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/detourmesh/detour/api/discoverypb"
)

func TestProtoRoundTripKeepsTheSnapshot(t *testing.T) {
	data, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want, err := Parse("design.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	pb := ToProto(want)
	// Over the wire and back, as the controller sends it.
	wire, err := proto.Marshal(pb)
	if err != nil {
		t.Fatal(err)
	}
	var received discoverypb.Snapshot
	if err := proto.Unmarshal(wire, &received); err != nil {
		t.Fatal(err)
	}
	got, err := FromProto(&received)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(Format(got), Format(want)) {
		t.Errorf("round trip changed the snapshot:\n got %s\nwant %s", Format(got), Format(want))
	}
	if got.Revision() != want.Revision() || got.TrustDomain() != want.TrustDomain() {
		t.Errorf("revision %q / trust domain %q, want %q / %q", got.Revision(), got.TrustDomain(), want.Revision(), want.TrustDomain())
	}
	if svc, ok := got.LookupAuthority("StockWeb.Web:8080"); !ok || svc.Name != "stockweb.web" {
		t.Errorf("authority lookup after the round trip failed")
	}
	if got.Services()[0].Authorities[0] != "stockdata.stocks:80" || len(pb.Services[0].Authorities) != 1 {
		t.Errorf("authorities are not carried in their own field: %v", pb.Services[0])
	}
}

func TestFromProtoMeansWhatAnAbsentFileFieldMeans(t *testing.T) {
	got, err := FromProto(&discoverypb.Snapshot{Services: []*discoverypb.Service{{
		Name:      "a.b",
		Addresses: []string{"198.19.0.1:80"},
		Endpoints: []*discoverypb.Endpoint{{Address: "198.18.0.1:8080"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	svc := got.Services()[0]
	ep := svc.Endpoints[0]
	if got.TrustDomain() != DefaultTrustDomain || svc.Protocol != ProtocolAuto || svc.Balancer != BalancerP2CEWMA ||
		ep.Weight != 1 || ep.Meshed() || got.Revision() == "" {
		t.Errorf("zero values: td %q protocol %s balancer %s weight %d meshed %v revision %q",
			got.TrustDomain(), svc.Protocol, svc.Balancer, ep.Weight, ep.Meshed(), got.Revision())
	}
}

func TestFromProtoRefusesWhatParseRefuses(t *testing.T) {
	svc := func(mod func(*discoverypb.Service)) *discoverypb.Snapshot {
		s := &discoverypb.Service{
			Name:      "stockdata.stocks",
			Addresses: []string{"198.19.0.10:80"},
			Protocol:  "http2",
			Endpoints: []*discoverypb.Endpoint{{Address: "198.18.0.11:8080", Identity: "spiffe://cluster.local/ns/stocks/sa/stockdata", Weight: 1}},
		}
		mod(s)
		return &discoverypb.Snapshot{Revision: "r1", TrustDomain: "cluster.local", Services: []*discoverypb.Service{s}}
	}
	tests := []struct {
		name    string
		pb      *discoverypb.Snapshot
		wantErr string
	}{
		{"a VIP with port 0", svc(func(s *discoverypb.Service) { s.Addresses = []string{"198.19.0.10:0"} }),
			"services[0].addresses[0]: 198.19.0.10:0: port 0 is not a valid port"},
		{"an endpoint identity in another trust domain", svc(func(s *discoverypb.Service) {
			s.Endpoints[0].Identity = "spiffe://evil.example/ns/a/sa/b"
		}), "services[0].endpoints[0].identity"},
		{"an unknown protocol", svc(func(s *discoverypb.Service) { s.Protocol = "grpc" }),
			"services[0].protocol: unknown protocol \"grpc\""},
		{"an endpoint that is a host name", svc(func(s *discoverypb.Service) { s.Endpoints[0].Address = "stockdata:8080" }),
			"services[0].endpoints[0].address"},
		{"the same endpoint twice", svc(func(s *discoverypb.Service) { s.Endpoints = append(s.Endpoints, s.Endpoints[0]) }),
			"services[0].endpoints[1].address: endpoint 198.18.0.11:8080 is already listed"},
		{"a service with no address", svc(func(s *discoverypb.Service) { s.Addresses = nil }),
			"needs at least one address"},
		{"an upper-case service name", svc(func(s *discoverypb.Service) { s.Name = "StockData.stocks" }),
			"services[0].name"},
		{"a VIP in the authorities list", svc(func(s *discoverypb.Service) { s.Authorities = []string{"198.19.0.11:80"} }),
			"an entry is in the wrong list"},
		{"an authority in the addresses list", svc(func(s *discoverypb.Service) { s.Addresses = append(s.Addresses, "stockdata.stocks:80") }),
			"an entry is in the wrong list"},
		{"a zone with a control character", svc(func(s *discoverypb.Service) { s.Endpoints[0].Zone = "a\nb" }),
			"control character"},
		{"a bad trust domain", &discoverypb.Snapshot{TrustDomain: "Cluster Local"}, "trustDomain"},
		{"no snapshot at all", nil, "no snapshot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromProto(tt.pb)
			if err == nil {
				t.Fatalf("accepted: %s", Format(got))
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), ProtoSource+": ") {
				t.Errorf("err = %q, want %q naming the %s without a line", err, tt.wantErr, ProtoSource)
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Errorf("err is %T, want an ErrorList", err)
			}
		})
	}
}

// FuzzFromProto: whatever strings a controller sends, FromProto does not panic, and what it
// accepts survives ToProto and FromProto unchanged.
func FuzzFromProto(f *testing.F) {
	f.Add("cluster.local", "a.b", "198.19.0.1:80", "a.b:80", "auto", "p2c-ewma", "198.18.0.1:8080", "spiffe://cluster.local/ns/a/sa/b", uint32(1), "z")
	f.Add("", "x", "[fd00::1]:80", "", "", "", "[fd00::2]:80", "", uint32(0), "")
	f.Add("td", "null", "~", "*a", "!!str", "{}", "- x", "&a b", uint32(7), "# c")
	f.Fuzz(func(t *testing.T, td, name, addr, authority, protocol, balancer, epAddr, identity string, weight uint32, zone string) {
		pb := &discoverypb.Snapshot{TrustDomain: td, Services: []*discoverypb.Service{{
			Name: name, Addresses: []string{addr}, Protocol: protocol, Balancer: balancer,
			Endpoints: []*discoverypb.Endpoint{{Address: epAddr, Identity: identity, Weight: weight, Zone: zone}},
		}}}
		if authority != "" {
			pb.Services[0].Authorities = []string{authority}
		}
		s, err := FromProto(pb)
		if err != nil {
			return
		}
		again, err := FromProto(ToProto(s))
		if err != nil {
			t.Fatalf("accepted %v, then refused its own conversion: %v", pb, err)
		}
		if !bytes.Equal(Format(again), Format(s)) {
			t.Fatalf("round trip changed the snapshot:\n%s\n%s", Format(s), Format(again))
		}
	})
}
