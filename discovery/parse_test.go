package discovery

import (
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func mustParse(t testing.TB, src string) *Snapshot {
	t.Helper()
	s, err := Parse("discovery.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return s
}

func TestParseDesignExample(t *testing.T) {
	data, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse("design.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	want := []*Service{
		{
			Name:        "stockdata.stocks",
			Addresses:   []netip.AddrPort{netip.MustParseAddrPort("198.19.0.10:80"), netip.MustParseAddrPort("[fd00:de71::10]:80")},
			Authorities: []string{"stockdata.stocks:80"},
			Protocol:    ProtocolAuto,
			Balancer:    BalancerP2CEWMA,
			Endpoints: []Endpoint{
				{Addr: netip.MustParseAddrPort("198.18.0.11:8080"), Identity: "spiffe://cluster.local/ns/stocks/sa/stockdata", Weight: 1, Zone: "a"},
				{Addr: netip.MustParseAddrPort("[fd00:de70::12]:8080"), Identity: "spiffe://cluster.local/ns/stocks/sa/stockdata", Weight: 3},
			},
		},
		{
			Name:        "stockweb.web",
			Addresses:   []netip.AddrPort{netip.MustParseAddrPort("198.19.0.20:80")},
			Authorities: []string{"stockweb.web:8080"},
			Protocol:    ProtocolHTTP1,
			Balancer:    BalancerRoundRobin,
			Endpoints:   []Endpoint{{Addr: netip.MustParseAddrPort("198.18.0.21:8080"), Weight: 1}},
		},
		{
			Name:      "legacy-db.data",
			Addresses: []netip.AddrPort{netip.MustParseAddrPort("198.19.0.30:5432")},
			Protocol:  ProtocolOpaque,
		},
	}
	if !reflect.DeepEqual(s.Services(), want) {
		t.Errorf("services:\n got %+v\nwant %+v", s.Services(), want)
	}
	if s.TrustDomain() != "cluster.local" {
		t.Errorf("trust domain = %q", s.TrustDomain())
	}
	if s.Revision() != Revision(data) || len(s.Revision()) != 12 {
		t.Errorf("revision = %q, want %q", s.Revision(), Revision(data))
	}
}

func TestLookup(t *testing.T) {
	data, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse("design.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		dst  string
		want string // service name, "" for no match
	}{
		{"an IPv4 VIP selects its service", "198.19.0.10:80", "stockdata.stocks"},
		{"an IPv6 VIP selects its service", "[fd00:de71::10]:80", "stockdata.stocks"},
		{"an IPv4-mapped VIP from a dual-stack socket selects the IPv4 service", "[::ffff:198.19.0.10]:80", "stockdata.stocks"},
		{"the VIP on another port selects nothing", "198.19.0.10:81", ""},
		{"an endpoint address is not a VIP", "198.18.0.11:8080", ""},
		{"an unknown address selects nothing", "10.0.0.1:80", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc, ok := s.Lookup(netip.MustParseAddrPort(tt.dst))
			if got := nameOf(svc, ok); got != tt.want {
				t.Errorf("Lookup(%s) = %q, want %q", tt.dst, got, tt.want)
			}
		})
	}
}

func TestLookupAuthority(t *testing.T) {
	data, _ := os.ReadFile("testdata/design.yaml")
	s, err := Parse("design.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		authority string
		want      string
	}{
		{"an exact authority selects its service", "stockdata.stocks:80", "stockdata.stocks"},
		{"a missing port means 80", "stockdata.stocks", "stockdata.stocks"},
		{"host names match case-insensitively", "StockData.STOCKS:80", "stockdata.stocks"},
		{"a trailing dot is ignored", "stockdata.stocks.:80", "stockdata.stocks"},
		{"an authority written in upper case in the file matches", "stockweb.web:8080", "stockweb.web"},
		{"the wrong port selects nothing", "stockdata.stocks:8080", ""},
		{"an IPv4 literal authority looks up the VIP", "198.19.0.20:80", "stockweb.web"},
		{"an IPv4 literal without a port means 80", "198.19.0.20", "stockweb.web"},
		{"a bracketed IPv6 literal looks up the VIP", "[fd00:de71::10]:80", "stockdata.stocks"},
		{"a bracketed IPv6 literal without a port means 80", "[fd00:de71::10]", "stockdata.stocks"},
		{"an unknown host selects nothing", "example.com", ""},
		{"an empty authority selects nothing", "", ""},
		{"garbage after brackets selects nothing", "[fd00:de71::10]x", ""},
		{"a port out of range selects nothing", "198.19.0.20:99999", ""},
		{"an overlong authority selects nothing", strings.Repeat("a", 300), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc, ok := s.LookupAuthority(tt.authority)
			if got := nameOf(svc, ok); got != tt.want {
				t.Errorf("LookupAuthority(%q) = %q, want %q", tt.authority, got, tt.want)
			}
		})
	}
}

func nameOf(svc *Service, ok bool) string {
	if !ok {
		return ""
	}
	return svc.Name
}

func TestParseDefaults(t *testing.T) {
	s := mustParse(t, `
services:
  - name: a.b
    addresses: ["198.19.0.1:80"]
    endpoints:
      - address: 10.0.0.1:80
      - address: 10.0.0.2:80
        identity: ""
`)
	if s.TrustDomain() != DefaultTrustDomain {
		t.Errorf("trust domain = %q, want %q", s.TrustDomain(), DefaultTrustDomain)
	}
	svc := s.Services()[0]
	if svc.Protocol != ProtocolAuto || svc.Balancer != BalancerP2CEWMA {
		t.Errorf("protocol, balancer = %v, %v; want auto, p2c-ewma", svc.Protocol, svc.Balancer)
	}
	for _, ep := range svc.Endpoints {
		if ep.Weight != 1 || ep.Meshed() {
			t.Errorf("endpoint %v: weight %d meshed %v; want weight 1, not meshed", ep.Addr, ep.Weight, ep.Meshed())
		}
	}
}

func TestParseAcceptsEdgeCases(t *testing.T) {
	tests := []struct {
		name string
		src  string
	}{
		{"no services at all", "services: []"},
		{"endpoints with no value", "services: [{name: a.b, addresses: ['1.2.3.4:80'], endpoints: }]"},
		{"a service without endpoints", "services: [{name: a.b, addresses: ['1.2.3.4:80']}]"},
		{"the largest weight", "services: [{name: a.b, addresses: ['1.2.3.4:80'], endpoints: [{address: '10.0.0.1:1', weight: 4294967295}]}]"},
		{"a hexadecimal weight", "services: [{name: a.b, addresses: ['1.2.3.4:80'], endpoints: [{address: '10.0.0.1:1', weight: 0x10}]}]"},
		{"a numeric zone", "services: [{name: a.b, addresses: ['1.2.3.4:80'], endpoints: [{address: '10.0.0.1:1', zone: 1}]}]"},
		{"the same endpoint in two services", "services: [{name: a.b, addresses: ['1.2.3.4:80'], endpoints: [{address: '10.0.0.1:1'}]}, {name: c.d, addresses: ['1.2.3.5:80'], endpoints: [{address: '10.0.0.1:1'}]}]"},
		{"another trust domain", "trustDomain: example.org\nservices: [{name: a.b, addresses: ['1.2.3.4:80'], endpoints: [{address: '10.0.0.1:1', identity: 'spiffe://example.org/ns/x/sa/y'}]}]"},
		{"a trust domain after the services that use it", "services: [{name: a.b, addresses: ['1.2.3.4:80'], endpoints: [{address: '10.0.0.1:1', identity: 'spiffe://example.org/w'}]}]\ntrustDomain: example.org"},
		{"a document start marker", "---\nservices: []"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse("discovery.yaml", []byte(tt.src)); err != nil {
				t.Errorf("Parse: %v", err)
			}
		})
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	// Each case is a valid file with one line broken; want is the whole first error.
	const head = "trustDomain: cluster.local\nservices:\n  - name: stockdata.stocks\n    addresses: [\"198.19.0.10:80\"]\n    endpoints:\n"
	ep := func(lines ...string) string { return head + "      - " + strings.Join(lines, "\n        ") + "\n" }
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"an unknown endpoint field", ep("address: 198.18.0.11:8080", "wieght: 2"),
			`discovery.yaml:7: services[0].endpoints[0].wieght: unknown field (known fields: address, identity, weight, zone, forZones)`},
		{"a bad endpoint address", ep("address: 198.18.0.300:8080"),
			`discovery.yaml:6: services[0].endpoints[0].address: "198.18.0.300:8080" is not an IP address and port (endpoints are addresses like 198.18.0.11:8080 or [fd00:de70::11]:8080)`},
		{"an endpoint host name", ep("address: pod.example:8080"),
			`discovery.yaml:6: services[0].endpoints[0].address: "pod.example:8080" is not an IP address and port`},
		{"an endpoint without a port", ep("address: 198.18.0.11"),
			`discovery.yaml:6: services[0].endpoints[0].address: "198.18.0.11" has no port`},
		{"an endpoint on port 0", ep("address: 198.18.0.11:0"),
			`discovery.yaml:6: services[0].endpoints[0].address: 198.18.0.11:0: port 0 is not a valid port`},
		{"an endpoint with an IPv6 zone", ep("address: '[fe80::1%eth0]:80'"),
			`discovery.yaml:6: services[0].endpoints[0].address: [fe80::1%eth0]:80: addresses with an IPv6 zone are not supported`},
		{"an endpoint without an address", ep("weight: 2"),
			`discovery.yaml:6: services[0].endpoints[0]: missing field "address"`},
		{"weight 0", ep("address: 198.18.0.11:8080", "weight: 0"),
			`discovery.yaml:7: services[0].endpoints[0].weight: weight 0 is not allowed: remove the endpoint to drain it`},
		{"a negative weight", ep("address: 198.18.0.11:8080", "weight: -1"),
			`discovery.yaml:7: services[0].endpoints[0].weight: -1 is out of range: want 1..4294967295`},
		{"a weight too large", ep("address: 198.18.0.11:8080", "weight: 4294967296"),
			`discovery.yaml:7: services[0].endpoints[0].weight: 4294967296 is out of range`},
		{"a string weight", ep("address: 198.18.0.11:8080", "weight: heavy"),
			`discovery.yaml:7: services[0].endpoints[0].weight: want an integer 1..4294967295, got "heavy"`},
		{"an identity that is not a SPIFFE ID", ep("address: 198.18.0.11:8080", "identity: stockdata"),
			`discovery.yaml:7: services[0].endpoints[0].identity: "stockdata" is not a SPIFFE ID: want spiffe://cluster.local/<path>`},
		{"an identity in another trust domain", ep("address: 198.18.0.11:8080", "identity: spiffe://evil.org/ns/stocks/sa/stockdata"),
			`discovery.yaml:7: services[0].endpoints[0].identity: "spiffe://evil.org/ns/stocks/sa/stockdata" is in trust domain "evil.org", not "cluster.local"`},
		{"an identity without a path", ep("address: 198.18.0.11:8080", "identity: spiffe://cluster.local"),
			`names a trust domain, not a workload`},
		{"an identity with a dot-dot segment", ep("address: 198.18.0.11:8080", "identity: spiffe://cluster.local/ns/../sa/x"),
			`has a relative path segment ".."`},
		{"an identity with a query", ep("address: 198.18.0.11:8080", "identity: spiffe://cluster.local/ns/a/sa/b?x=1"),
			`character '?' is not allowed in a SPIFFE ID path`},
		{"an identity with a port", ep("address: 198.18.0.11:8080", "identity: spiffe://cluster.local:443/ns/a/sa/b"),
			`character ':' is not allowed (use lower-case letters`},
		{"the same endpoint twice", ep("address: 198.18.0.11:8080") + "      - address: 198.18.0.11:8080\n",
			`discovery.yaml:7: services[0].endpoints[1].address: endpoint 198.18.0.11:8080 is already listed at line 6`},
		{"a zone with a control character", ep("address: 198.18.0.11:8080", `zone: "a\tb"`),
			`discovery.yaml:7: services[0].endpoints[0].zone: zone "a\tb" contains a control character`},
		{"a zone hint twice", ep("address: 198.18.0.11:8080", "forZones: [a, a]"),
			`discovery.yaml:7: services[0].endpoints[0].forZones: zone hint "a" appears twice`},
		{"an empty zone hint", ep("address: 198.18.0.11:8080", `forZones: [a, ""]`),
			`discovery.yaml:7: services[0].endpoints[0].forZones: an empty zone hint`},
		{"zone hints that are not a list", ep("address: 198.18.0.11:8080", "forZones: a"),
			`discovery.yaml:7: services[0].endpoints[0].forZones: want a list`},
		{"nine zone hints", ep("address: 198.18.0.11:8080", "forZones: [a, b, c, d, e, f, g, h, i]"),
			`discovery.yaml:7: services[0].endpoints[0].forZones: 9 zone hints; at most 8`},
		{"a duplicate key", ep("address: 198.18.0.11:8080", "address: 198.18.0.12:8080"),
			`discovery.yaml:7: services[0].endpoints[0].address: field appears twice`},
		{"an unknown protocol", "services:\n  - name: a.b\n    addresses: [\"198.19.0.10:80\"]\n    protocol: grpc\n",
			`discovery.yaml:4: services[0].protocol: unknown protocol "grpc" (want auto, http1, http2 or opaque)`},
		{"an unknown balancer", "services:\n  - name: a.b\n    addresses: [\"198.19.0.10:80\"]\n    balancer: least-conn\n",
			`discovery.yaml:4: services[0].balancer: unknown balancer "least-conn" (want p2c-ewma or round-robin)`},
		{"an address used by two services", head + "  - name: other.stocks\n    addresses: [\"198.19.0.10:80\"]\n",
			`discovery.yaml:7: services[1].addresses[0]: 198.19.0.10:80 is already used by service "stockdata.stocks" at line 4; an address selects one service`},
		{"an authority used by two services in different case", "services:\n  - name: a.b\n    addresses: [a.b:80]\n  - name: c.d\n    addresses: [A.B:80]\n",
			`discovery.yaml:5: services[1].addresses[0]: a.b:80 is already used by service "a.b" at line 3`},
		{"the same address twice in one service", "services:\n  - name: a.b\n    addresses: [\"198.19.0.10:80\", \"198.19.0.10:80\"]\n",
			`discovery.yaml:3: services[0].addresses[1]: 198.19.0.10:80 is already used by service "a.b" at line 3`},
		{"a VIP without a port", "services:\n  - name: a.b\n    addresses: [\"198.19.0.10\"]\n",
			`discovery.yaml:3: services[0].addresses[0]: "198.19.0.10" has no port: write 198.19.0.10:80`},
		{"an authority without a port", "services:\n  - name: a.b\n    addresses: [a.b]\n",
			`discovery.yaml:3: services[0].addresses[0]: "a.b" has no port: write "a.b:80" (authorities are host:port)`},
		{"a VIP on port 0", "services:\n  - name: a.b\n    addresses: [\"198.19.0.10:0\"]\n",
			`discovery.yaml:3: services[0].addresses[0]: 198.19.0.10:0: port 0 is not a valid port`},
		{"a mistyped VIP", "services:\n  - name: a.b\n    addresses: [\"198.19.0:80\"]\n",
			`discovery.yaml:3: services[0].addresses[0]: "198.19.0:80" is neither IP:port nor host:port: looks like a mistyped IP address`},
		{"an unspecified VIP", "services:\n  - name: a.b\n    addresses: [\"0.0.0.0:80\"]\n",
			`discovery.yaml:3: services[0].addresses[0]: 0.0.0.0:80: the unspecified address is not a destination`},
		{"an authority with a bad port", "services:\n  - name: a.b\n    addresses: [\"a.b:http\"]\n",
			`discovery.yaml:3: services[0].addresses[0]: "a.b:http": port "http" is not a port 1..65535`},
		{"an authority with an underscore", "services:\n  - name: a.b\n    addresses: [\"a_b.c:80\"]\n",
			`character '_' is not allowed in a host name`},
		{"no addresses", "services:\n  - name: a.b\n    addresses: []\n",
			`discovery.yaml:3: services[0].addresses: a service needs at least one address`},
		{"a missing address list", "services:\n  - name: a.b\n",
			`discovery.yaml:2: services[0]: missing field "addresses"`},
		{"a service name in upper case", "services:\n  - name: A.b\n    addresses: [\"198.19.0.10:80\"]\n",
			`discovery.yaml:2: services[0].name: service name "A.b" is not a lower-case DNS name like "stockdata.stocks"`},
		{"two services with one name", "services:\n  - name: a.b\n    addresses: [\"198.19.0.10:80\"]\n  - name: a.b\n    addresses: [\"198.19.0.11:80\"]\n",
			`discovery.yaml:4: services[1].name: service "a.b" is already defined at line 2`},
		{"a bad trust domain", "trustDomain: Cluster.Local\nservices: []\n",
			`discovery.yaml:1: trustDomain: trust domain "Cluster.Local": character 'C' is not allowed`},
		{"an unknown top-level field", "services: []\nendpoints: []\n",
			`discovery.yaml:2: endpoints: unknown field (known fields: trustDomain, services)`},
		{"no services field", "trustDomain: cluster.local\n",
			`discovery.yaml:1: missing field "services"`},
		{"services as a mapping", "services:\n  a: b\n",
			`discovery.yaml:2: services: want a list, got a mapping`},
		{"services left empty", "services:\n",
			`discovery.yaml:1: services: want a list, got nothing (null)`},
		{"a service that is a string", "services:\n  - stockdata\n",
			`discovery.yaml:2: services[0]: want a mapping of fields, got "stockdata"`},
		{"a list where a string goes", "services:\n  - name: [a]\n    addresses: [\"198.19.0.10:80\"]\n",
			`discovery.yaml:2: services[0].name: want a string, got a list`},
		{"an empty file", "", `discovery.yaml:1: file is empty: write "services: []" to declare no services`},
		{"a file of comments", "# nothing\n", `file is empty`},
		{"a YAML syntax error", "services: [\n  - name: a\n", `discovery.yaml:`},
		{"a tab for indentation", "services:\n\t- name: a.b\n", `discovery.yaml:2: invalid YAML: found character that cannot start any token`},
		{"two documents", "services: []\n---\nservices: []\n", `discovery.yaml:2: a discovery file holds one YAML document`},
		{"an alias", "trustDomain: &td cluster.local\nservices:\n  - name: *td\n    addresses: [\"198.19.0.10:80\"]\n",
			`discovery.yaml:3: services[0].name: YAML aliases are not supported: write the value out`},
		{"a merge key", "services:\n  - <<: {name: a.b}\n    addresses: [\"198.19.0.10:80\"]\n",
			`discovery.yaml:2: services[0]: merge keys (<<) are not supported: write the fields out`},
		{"a custom tag", "services:\n  - name: !secret a.b\n    addresses: [\"198.19.0.10:80\"]\n",
			`discovery.yaml:2: services[0].name: want a string, got "a.b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("discovery.yaml", []byte(tt.src))
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q\n%s", tt.want, tt.src)
			}
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error is %T, want a non-empty ErrorList", err)
			}
			if first := list[0].Error(); !strings.Contains(first, tt.want) {
				t.Errorf("first error:\n got %s\nwant %s", first, tt.want)
			}
		})
	}
}

func TestParseReportsEveryProblemUpToALimit(t *testing.T) {
	var b strings.Builder
	b.WriteString("services:\n")
	for i := 0; i < 15; i++ {
		b.WriteString("  - name: s\n    addresses: [\"198.19.0.1:80\"]\n    bogus: 1\n")
	}
	_, err := Parse("discovery.yaml", []byte(b.String()))
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("error is %T", err)
	}
	if len(list) != maxErrors {
		t.Errorf("got %d errors, want %d", len(list), maxErrors)
	}
	if !strings.HasSuffix(list[len(list)-1].Msg, "more problems)") {
		t.Errorf("last error %q does not count the problems left out", list[len(list)-1].Msg)
	}
	var one *Error
	if !errors.As(err, &one) || one.Line != 4 {
		t.Errorf("errors.As(*Error) = %v, want the first problem at line 4", one)
	}
}

func TestFormatRoundTrips(t *testing.T) {
	data, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s1, err := Parse("design.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	out := Format(s1)
	s2, err := Parse("formatted.yaml", out)
	if err != nil {
		t.Fatalf("Parse(Format(s)): %v\n%s", err, out)
	}
	if !reflect.DeepEqual(s1.Services(), s2.Services()) || s1.TrustDomain() != s2.TrustDomain() {
		t.Errorf("round trip changed the snapshot:\n%s", out)
	}
}

func TestTrustDomainID(t *testing.T) {
	td := DefaultTrustDomain
	id := td.ID("stocks", "stockdata")
	if id != "spiffe://cluster.local/ns/stocks/sa/stockdata" {
		t.Errorf("ID = %q", id)
	}
	if err := td.CheckID(id); err != nil {
		t.Errorf("CheckID(ID()) = %v", err)
	}
}

var sinkSvc *Service

func BenchmarkLookup(b *testing.B) {
	s := benchSnapshot(b)
	dst := netip.MustParseAddrPort("198.19.0.200:80")
	b.ReportAllocs()
	for b.Loop() {
		sinkSvc, _ = s.Lookup(dst)
	}
	if sinkSvc == nil {
		b.Fatal("no match")
	}
}

func BenchmarkLookupAuthority(b *testing.B) {
	s := benchSnapshot(b)
	b.ReportAllocs()
	for b.Loop() {
		sinkSvc, _ = s.LookupAuthority("Svc200.Bench:80")
	}
	if sinkSvc == nil {
		b.Fatal("no match")
	}
}

func BenchmarkLookupAuthorityWithoutPort(b *testing.B) {
	s := benchSnapshot(b)
	b.ReportAllocs()
	for b.Loop() {
		sinkSvc, _ = s.LookupAuthority("svc200.bench")
	}
	if sinkSvc == nil {
		b.Fatal("no match")
	}
}

// benchSnapshot has 500 services, each with a VIP and an authority.
func benchSnapshot(b *testing.B) *Snapshot {
	var sb strings.Builder
	sb.WriteString("services:\n")
	for i := 0; i < 500; i++ {
		sb.WriteString("  - name: svc" + strconv.Itoa(i) + ".bench\n")
		sb.WriteString("    addresses: [\"198.19." + strconv.Itoa(i/256) + "." + strconv.Itoa(i%256) + ":80\", \"svc" + strconv.Itoa(i) + ".bench:80\"]\n")
	}
	s, err := Parse("bench.yaml", []byte(sb.String()))
	if err != nil {
		b.Fatal(err)
	}
	return s
}
