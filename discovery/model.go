package discovery

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Endpoint is one backend of a service: an address the proxy dials, the identity it must prove
// there, and how much traffic it should take relative to its peers.
type Endpoint struct {
	// Addr is the endpoint's IP and port. IPv4 addresses are never stored IPv4-mapped.
	Addr netip.AddrPort
	// Identity is the SPIFFE ID the endpoint's proxy must present, in the snapshot's trust
	// domain. Empty means the endpoint is not meshed: the proxy talks to it in plain text.
	Identity string
	// Weight is the endpoint's share of traffic relative to the other endpoints of its service,
	// at least 1 (the default).
	Weight uint32
	// Zone is a free-form locality label (e.g. a Kubernetes topology zone); empty if unknown.
	Zone string
	// ForZones are the zones whose clients this endpoint should serve (an EndpointSlice's
	// hints.forZones, as topology-aware routing writes them); empty means no hint. A proxy told
	// its zone routes only to the endpoints hinted for it while every endpoint carries hints
	// and one is for its zone, as kube-proxy does (ForZone).
	ForZones []string
}

// Equal reports whether e and o are the same endpoint in every field.
func (e *Endpoint) Equal(o *Endpoint) bool {
	return e.Addr == o.Addr && e.Identity == o.Identity && e.Weight == o.Weight && e.Zone == o.Zone &&
		slices.Equal(e.ForZones, o.ForZones)
}

// ForZone returns the endpoints a client in zone should use: those hinted for zone when every
// endpoint carries hints and at least one is for zone, else all of eps (no zone, a slice
// half-hinted while the hints are computed, or no endpoint left for zone: falling back keeps
// the service reachable). It returns eps itself when nothing is filtered.
func ForZone(eps []Endpoint, zone string) []Endpoint {
	if zone == "" || len(eps) == 0 {
		return eps
	}
	n := 0
	for i := range eps {
		if len(eps[i].ForZones) == 0 {
			return eps
		}
		if slices.Contains(eps[i].ForZones, zone) {
			n++
		}
	}
	if n == 0 || n == len(eps) {
		return eps
	}
	out := make([]Endpoint, 0, n)
	for _, e := range eps {
		if slices.Contains(e.ForZones, zone) {
			out = append(out, e)
		}
	}
	return out
}

// Meshed reports whether the endpoint runs a Detour proxy that the caller must speak mTLS to.
func (e *Endpoint) Meshed() bool { return e.Identity != "" }

// Protocol is the application protocol a service declares. It tells the proxy whether to sniff
// (ProtocolAuto) or to trust the declaration and skip detection.
type Protocol uint8

// Protocols a service can declare. The zero value is ProtocolAuto.
const (
	ProtocolAuto   Protocol = iota // sniff the first bytes of each connection
	ProtocolHTTP1                  // HTTP/1.x: balanced per request
	ProtocolHTTP2                  // HTTP/2 (prior knowledge, h2c or gRPC): balanced per stream
	ProtocolOpaque                 // anything else: relayed byte for byte, balanced per connection
)

var protocolNames = [...]string{
	ProtocolAuto:   "auto",
	ProtocolHTTP1:  "http1",
	ProtocolHTTP2:  "http2",
	ProtocolOpaque: "opaque",
}

// String returns the protocol as the discovery file spells it.
func (p Protocol) String() string {
	if int(p) < len(protocolNames) {
		return protocolNames[p]
	}
	return "Protocol(" + strconv.Itoa(int(p)) + ")"
}

// ParseProtocol returns the protocol the discovery file spells as s.
func ParseProtocol(s string) (Protocol, bool) {
	for i, n := range protocolNames {
		if n == s {
			return Protocol(i), true
		}
	}
	return 0, false
}

// Balancer names the algorithm that chooses an endpoint for each request (or connection, for
// opaque traffic). The zero value is BalancerP2CEWMA.
type Balancer uint8

// Balancers a service can ask for.
const (
	// BalancerP2CEWMA picks the cheaper of two random endpoints, cost being the peak-EWMA of
	// response latency times outstanding requests, divided by weight (linkerd2-proxy, Finagle).
	BalancerP2CEWMA Balancer = iota
	// BalancerRoundRobin cycles through the endpoints in weighted order.
	BalancerRoundRobin
)

var balancerNames = [...]string{
	BalancerP2CEWMA:    "p2c-ewma",
	BalancerRoundRobin: "round-robin",
}

// String returns the balancer as the discovery file spells it.
func (b Balancer) String() string {
	if int(b) < len(balancerNames) {
		return balancerNames[b]
	}
	return "Balancer(" + strconv.Itoa(int(b)) + ")"
}

// ParseBalancer returns the balancer the discovery file spells as s.
func ParseBalancer(s string) (Balancer, bool) {
	for i, n := range balancerNames {
		if n == s {
			return Balancer(i), true
		}
	}
	return 0, false
}

// Service is a set of endpoints and the destinations that select it.
type Service struct {
	// Name is the namespace-qualified service name, e.g. "stockdata.stocks".
	Name string
	// Addresses are the VIPs (IP and port) whose connections go to this service.
	Addresses []netip.AddrPort
	// Authorities are the host:port authorities (HTTP :authority / Host) that select this service,
	// lower case, e.g. "stockdata.stocks:80".
	Authorities []string
	// Protocol is the declared protocol; ProtocolAuto means sniff.
	Protocol Protocol
	// Balancer is the endpoint-choice algorithm.
	Balancer Balancer
	// Policy is the service's timeouts, retries, retry budget and failure accrual; nil means
	// the defaults (PolicyOf). It is part of the entry, like Protocol.
	Policy *Policy
	// Endpoints are the backends, in file order. A service may have none: it is known, but a
	// request to it fails rather than leaving the mesh.
	Endpoints []Endpoint
	// Unresolved says the source has not given the service's endpoints yet: Endpoints is empty
	// because nobody asked, not because there are none. A Source that is a Subscriber resolves a
	// service when the proxy first uses it; the file source resolves every service.
	Unresolved bool
}

// EqualEntry reports whether s and o are the same table entry: the same name, destinations and
// policy, whatever their endpoints. A field added to Service must be added here.
func (s *Service) EqualEntry(o *Service) bool {
	return s.Name == o.Name && slices.Equal(s.Addresses, o.Addresses) && slices.Equal(s.Authorities, o.Authorities) &&
		s.Protocol == o.Protocol && s.Balancer == o.Balancer && equalPolicy(s.Policy, o.Policy)
}

// Equal reports whether s and o describe the same service: the same entry, resolution and
// endpoints in the same order.
func (s *Service) Equal(o *Service) bool {
	return s == o || s.EqualEntry(o) && s.Unresolved == o.Unresolved &&
		slices.EqualFunc(s.Endpoints, o.Endpoints, func(a, b Endpoint) bool { return a.Equal(&b) })
}

// Snapshot is one immutable, consistent view of discovery. It is safe for concurrent use, and
// neither it nor the Services it returns may be modified: a new view is a new Snapshot.
type Snapshot struct {
	trustDomain TrustDomain
	services    []*Service
	*index
	revision string
}

// index maps destinations and names to positions in a snapshot's services. It depends only on
// the services' names and destinations, so snapshots that differ only in endpoints share it
// (WithServices): a change of one service's endpoints costs a copy of the services slice, not
// a rebuild of the maps.
type index struct {
	byAddr      map[netip.AddrPort]int32
	byAuthority map[string]int32
	byName      map[string]int32
}

// NewSnapshot builds a snapshot from services that the caller has already validated (Parse does
// this for the file source). It indexes every address, authority and name; when two services
// claim the same destination (or name) the first one wins. The snapshot takes ownership of
// services.
func NewSnapshot(td TrustDomain, revision string, services []*Service) *Snapshot {
	ix := &index{
		byAddr:      make(map[netip.AddrPort]int32, len(services)),
		byAuthority: make(map[string]int32, len(services)),
		byName:      make(map[string]int32, len(services)),
	}
	for i, svc := range services {
		for _, a := range svc.Addresses {
			a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
			if _, dup := ix.byAddr[a]; !dup {
				ix.byAddr[a] = int32(i)
			}
		}
		for _, a := range svc.Authorities {
			if _, dup := ix.byAuthority[a]; !dup {
				ix.byAuthority[a] = int32(i)
			}
		}
		if _, dup := ix.byName[svc.Name]; !dup {
			ix.byName[svc.Name] = int32(i)
		}
	}
	return &Snapshot{trustDomain: td, services: services, index: ix, revision: revision}
}

// Service returns the service named name.
func (s *Snapshot) Service(name string) (*Service, bool) {
	i, ok := s.byName[name]
	if !ok {
		return nil, false
	}
	return s.services[i], true
}

// WithServices returns a snapshot like s in which each of replace takes the place of the
// service of the same name, with revision rev. When the replacements keep their names,
// addresses and authorities (an endpoint change), the new snapshot shares s's index and costs
// one copy of the services slice; otherwise it is built anew, a replacement whose name s does
// not have being added at the end. s is not changed.
func (s *Snapshot) WithServices(rev string, replace ...*Service) *Snapshot {
	services := slices.Clone(s.services)
	shared := true
	for _, r := range replace {
		i, ok := s.byName[r.Name]
		if !ok {
			services = append(services, r)
			shared = false
			continue
		}
		old := services[i]
		if !slices.Equal(old.Addresses, r.Addresses) || !slices.Equal(old.Authorities, r.Authorities) {
			shared = false
		}
		services[i] = r
	}
	if !shared {
		return NewSnapshot(s.trustDomain, rev, services)
	}
	return &Snapshot{trustDomain: s.trustDomain, services: services, index: s.index, revision: rev}
}

// keepUnchanged makes next use prev's *Service for every service equal in both, so consumers
// that diff snapshots by pointer (Source) see only what changed. next must not be shared yet.
func keepUnchanged(prev, next *Snapshot) {
	if prev == nil {
		return
	}
	for i, svc := range next.services {
		if old, ok := prev.Service(svc.Name); ok && old.Equal(svc) {
			next.services[i] = old
		}
	}
}

// TrustDomain is the trust domain every meshed identity in the snapshot belongs to.
func (s *Snapshot) TrustDomain() TrustDomain { return s.trustDomain }

// Services returns every service, in the order they were defined. The slice is shared: do not
// modify it or the services.
func (s *Snapshot) Services() []*Service { return s.services }

// Revision names the content the snapshot was built from (for the file source, a short hash of
// the file), so logs and /debug/endpoints can say which version is in force.
func (s *Snapshot) Revision() string { return s.revision }

// Lookup returns the service whose address is dst, the original destination of a connection.
// An IPv4-mapped IPv6 dst (from a dual-stack socket) matches the IPv4 address. It does not
// allocate.
func (s *Snapshot) Lookup(dst netip.AddrPort) (*Service, bool) {
	if dst.Addr().Is4In6() {
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	}
	i, ok := s.byAddr[dst]
	if !ok {
		return nil, false
	}
	return s.services[i], true
}

// maxAuthority bounds the authorities LookupAuthority normalizes on the stack; a DNS name is at
// most 253 bytes, plus ":" and a port.
const maxAuthority = 253 + 1 + 5

// LookupAuthority returns the service selected by an HTTP authority (the :authority pseudo-header
// or the Host header): host[:port], where a missing port means 80 because the mesh sees only
// plain-text HTTP. Host names match case-insensitively and a trailing dot is ignored. An IP
// literal authority ("198.19.0.10:80", "[fd00::10]:80") looks up the service by address. It does
// not allocate.
func (s *Snapshot) LookupAuthority(authority string) (*Service, bool) {
	if authority == "" || len(authority) > maxAuthority {
		return nil, false
	}
	host, port := splitAuthority(authority)
	if port == "" {
		port = "80"
	}
	if looksLikeIP(host) {
		ip, err := netip.ParseAddr(host)
		p, ok := parsePort(port)
		if err != nil || !ok || ip.Zone() != "" {
			return nil, false
		}
		return s.Lookup(netip.AddrPortFrom(ip, p))
	}
	host = strings.TrimSuffix(host, ".")
	if len(host)+1+len(port) > maxAuthority {
		return nil, false
	}
	var buf [maxAuthority]byte
	n := 0
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[n] = c
		n++
	}
	buf[n] = ':'
	n++
	n += copy(buf[n:], port)
	// The compiler turns a map index by string(bytes) into a lookup without a copy.
	i, ok := s.byAuthority[string(buf[:n])]
	if !ok {
		return nil, false
	}
	return s.services[i], true
}

// looksLikeIP reports whether host can only be an IP literal, so that host names skip
// netip.ParseAddr, whose error allocates.
func looksLikeIP(host string) bool {
	if strings.IndexByte(host, ':') >= 0 {
		return true
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return true
}

// splitAuthority splits host[:port], where host may be a bracketed IPv6 literal, without
// validating either part. Brackets are removed from the host.
func splitAuthority(a string) (host, port string) {
	if strings.HasPrefix(a, "[") {
		end := strings.IndexByte(a, ']')
		if end < 0 {
			return a, ""
		}
		host, rest := a[1:end], a[end+1:]
		if strings.HasPrefix(rest, ":") {
			return host, rest[1:]
		}
		if rest != "" {
			return a, "" // garbage after the bracket: matches nothing
		}
		return host, ""
	}
	i := strings.LastIndexByte(a, ':')
	if i < 0 {
		return a, ""
	}
	if strings.IndexByte(a[:i], ':') >= 0 {
		return a, "" // an unbracketed IPv6 literal, no port
	}
	return a[:i], a[i+1:]
}

// parsePort parses a decimal TCP port 1..65535 without allocating.
func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n == 0 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}
