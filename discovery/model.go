package discovery

import (
	"net/netip"
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
	// Endpoints are the backends, in file order. A service may have none: it is known, but a
	// request to it fails rather than leaving the mesh.
	Endpoints []Endpoint
}

// Snapshot is one immutable, consistent view of discovery. It is safe for concurrent use, and
// neither it nor the Services it returns may be modified: a new view is a new Snapshot.
type Snapshot struct {
	trustDomain TrustDomain
	services    []*Service
	byAddr      map[netip.AddrPort]*Service
	byAuthority map[string]*Service
	revision    string
}

// NewSnapshot builds a snapshot from services that the caller has already validated (Parse does
// this for the file source). It indexes every address and authority; when two services claim the
// same destination the first one wins. The snapshot takes ownership of services.
func NewSnapshot(td TrustDomain, revision string, services []*Service) *Snapshot {
	s := &Snapshot{
		trustDomain: td,
		services:    services,
		byAddr:      make(map[netip.AddrPort]*Service),
		byAuthority: make(map[string]*Service),
		revision:    revision,
	}
	for _, svc := range services {
		for _, a := range svc.Addresses {
			a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
			if _, dup := s.byAddr[a]; !dup {
				s.byAddr[a] = svc
			}
		}
		for _, a := range svc.Authorities {
			if _, dup := s.byAuthority[a]; !dup {
				s.byAuthority[a] = svc
			}
		}
	}
	return s
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
	svc, ok := s.byAddr[dst]
	return svc, ok
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
	svc, ok := s.byAuthority[string(buf[:n])]
	return svc, ok
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
