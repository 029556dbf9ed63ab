package mtls

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Mode says whether an inbound port accepts plaintext clients.
type Mode uint8

const (
	// Permissive accepts plaintext clients (not meshed, or not yet) and mTLS peers alike: the
	// default, so that meshing a server does not cut off its unmeshed clients.
	Permissive Mode = iota
	// Strict accepts only mTLS peers.
	Strict
)

// String returns the flag spelling of m.
func (m Mode) String() string {
	switch m {
	case Permissive:
		return "permissive"
	case Strict:
		return "strict"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// ParseMode parses "permissive" or "strict".
func ParseMode(s string) (Mode, error) {
	switch strings.TrimSpace(s) {
	case "permissive":
		return Permissive, nil
	case "strict":
		return Strict, nil
	}
	return 0, fmt.Errorf("policy mode %q: use permissive or strict", s)
}

// Policy is the inbound authorization of a proxy: per application port, whether plaintext is
// accepted and which peer identities may call. It is immutable once built; Decide may be called
// concurrently from any goroutine.
//
// Its flag syntax (ParsePolicy):
//
//	--policy permissive|strict                      Default (empty: permissive)
//	--port-policy PORT=MODE[,PORT=MODE...]          Ports, e.g. 8080=permissive,9000=strict
//	--allow PORT=ID[,ID...][;PORT=ID[,ID...]...]    Allow, e.g.
//	    8080=spiffe://cluster.local/ns/web/sa/stockweb,spiffe://cluster.local/ns/web/sa/admin;9000=spiffe://cluster.local/ns/batch/sa/loader
//
// Commas and semicolons cannot occur in a SPIFFE ID, so they are unambiguous separators; spaces
// around items are ignored. Each port appears at most once per flag. A port with an allow-list
// admits only the listed mTLS peers, so it is strict by nature: naming it permissive in
// --port-policy is a contradiction and an error.
type Policy struct {
	// Default applies to ports not in Ports.
	Default Mode
	// Ports overrides Default per port.
	Ports map[uint16]Mode
	// Allow restricts a port to the listed peer identities (and so refuses plaintext on it).
	// A port without an entry admits any peer the mTLS handshake verified.
	Allow map[uint16][]spiffeid.ID
	// Probes are the kubelet's probe paths per port (--probe-paths, which the injector computes
	// from the pod's probes). The kubelet calls them from the node in plaintext, so a request to
	// exactly one of them (GET or HEAD; POST for the gRPC health check) is let through on a
	// strict or allow-listed port, as Linkerd's default policy does for probes: a strict pod
	// whose probes failed would never become ready. Nothing else on the port is opened.
	Probes map[uint16][]string
}

// ParsePolicy builds a Policy from the three flag values described at Policy.
func ParsePolicy(mode, ports, allow string) (Policy, error) {
	var p Policy
	var err error
	if strings.TrimSpace(mode) != "" {
		if p.Default, err = ParseMode(mode); err != nil {
			return Policy{}, err
		}
	}
	if p.Ports, err = ParsePortModes(ports); err != nil {
		return Policy{}, err
	}
	if p.Allow, err = ParseAllow(allow); err != nil {
		return Policy{}, err
	}
	return p, p.Validate()
}

// Validate reports contradictions: a port both permissive and allow-listed, an empty
// allow-list, port 0.
func (p Policy) Validate() error {
	for _, port := range slices.Sorted(maps.Keys(p.Allow)) {
		if port == 0 {
			return errors.New("allow-list for port 0: ports are 1-65535")
		}
		if len(p.Allow[port]) == 0 {
			return fmt.Errorf("allow-list for port %d is empty: list at least one SPIFFE ID, or drop the port", port)
		}
		if m, ok := p.Ports[port]; ok && m == Permissive {
			return fmt.Errorf("port %d is permissive but has an allow-list, which admits only mTLS peers: drop one of the two", port)
		}
	}
	for port, m := range p.Ports {
		if port == 0 {
			return errors.New("policy for port 0: ports are 1-65535")
		}
		if m > Strict {
			return fmt.Errorf("port %d: %v", port, m)
		}
	}
	if p.Default > Strict {
		return fmt.Errorf("default: %v", p.Default)
	}
	return nil
}

// ParsePortModes parses "PORT=MODE[,PORT=MODE...]"; an empty string is no overrides.
func ParsePortModes(s string) (map[uint16]Mode, error) {
	out := map[uint16]Mode{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		portStr, modeStr, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("port policy %q: want PORT=permissive or PORT=strict", item)
		}
		port, err := parsePort(portStr)
		if err != nil {
			return nil, fmt.Errorf("port policy %q: %w", item, err)
		}
		m, err := ParseMode(modeStr)
		if err != nil {
			return nil, fmt.Errorf("port policy %q: %w", item, err)
		}
		if _, dup := out[port]; dup {
			return nil, fmt.Errorf("port policy: port %d given twice", port)
		}
		out[port] = m
	}
	return out, nil
}

// ParseAllow parses "PORT=ID[,ID...][;PORT=ID[,ID...]...]"; an empty string is no allow-lists.
func ParseAllow(s string) (map[uint16][]spiffeid.ID, error) {
	out := map[uint16][]spiffeid.ID{}
	for item := range strings.SplitSeq(s, ";") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		portStr, list, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("allow %q: want PORT=spiffe://...[,spiffe://...]", item)
		}
		port, err := parsePort(portStr)
		if err != nil {
			return nil, fmt.Errorf("allow %q: %w", item, err)
		}
		if _, dup := out[port]; dup {
			return nil, fmt.Errorf("allow: port %d given twice; list its identities once, separated by commas", port)
		}
		var ids []spiffeid.ID
		for idStr := range strings.SplitSeq(list, ",") {
			idStr = strings.TrimSpace(idStr)
			if idStr == "" {
				continue
			}
			id, err := spiffeid.FromString(idStr)
			if err != nil {
				return nil, fmt.Errorf("allow for port %d: %q is not a SPIFFE ID: %w", port, idStr, err)
			}
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 {
			return nil, fmt.Errorf("allow for port %d lists no identity", port)
		}
		out[port] = ids
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want a number 1-65535", s)
	}
	return uint16(n), nil
}

// Flags returns p in the flag syntax ParsePolicy reads, ports in ascending order: for logs,
// /debug endpoints, and round trips.
func (p Policy) Flags() (mode, ports, allow string) {
	var b strings.Builder
	for _, port := range slices.Sorted(maps.Keys(p.Ports)) {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d=%s", port, p.Ports[port])
	}
	ports = b.String()
	b.Reset()
	for _, port := range slices.Sorted(maps.Keys(p.Allow)) {
		if b.Len() > 0 {
			b.WriteByte(';')
		}
		fmt.Fprintf(&b, "%d=", port)
		for i, id := range p.Allow[port] {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(id.String())
		}
	}
	return p.Default.String(), ports, b.String()
}

// Decide says whether a connection or request to the application's port may proceed, and why.
// peer is the identity mutual TLS verified, nil for a plaintext client. Strict ports refuse
// plaintext; allow-listed ports refuse plaintext and identities not on the list. The reason of an
// allowed decision is a constant, so the common path does not allocate.
func (p Policy) Decide(port uint16, peer *spiffeid.ID) (allowed bool, reason string) {
	if peer == nil {
		return p.DecideString(port, "")
	}
	return p.DecideString(port, peer.String())
}

// DecideString is Decide with the peer as a string, as the engines' ConnInfo.Peer carries it:
// "" is a plaintext client.
func (p Policy) DecideString(port uint16, peer string) (allowed bool, reason string) {
	if list, ok := p.Allow[port]; ok {
		if peer == "" {
			return false, fmt.Sprintf("port %d admits only %s over mTLS: plaintext refused", port, idList(list))
		}
		for _, id := range list {
			if id.String() == peer {
				return true, "mTLS peer on the port's allow-list"
			}
		}
		return false, fmt.Sprintf("%s may not call port %d (allowed: %s)", peer, port, idList(list))
	}
	if peer != "" {
		return true, "mTLS peer"
	}
	if p.modeOf(port) == Strict {
		return false, fmt.Sprintf("port %d is strict: plaintext refused, only meshed clients over mTLS", port)
	}
	return true, "plaintext accepted (permissive)"
}

// DecideRequest is DecideString for an HTTP request, which a kubelet probe path (Probes) lets
// through in plaintext where DecideString would refuse it. path may carry a query, which is
// ignored.
func (p Policy) DecideRequest(port uint16, peer, method, path string) (allowed bool, reason string) {
	ok, why := p.DecideString(port, peer)
	if ok || peer != "" || len(p.Probes) == 0 {
		return ok, why
	}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	for _, pp := range p.Probes[port] {
		if pp != path {
			continue
		}
		if method == "GET" || method == "HEAD" || (method == "POST" && path == grpcHealthPath) {
			return true, "kubelet probe path"
		}
	}
	return ok, why
}

// ParseProbePaths parses --probe-paths ("PORT/PATH PORT/PATH ..."), as the injector writes it from a pod's probes, into Policy.Probes.
func ParseProbePaths(s string) (map[uint16][]string, error) {
	out := map[uint16][]string{}
	for _, f := range strings.Fields(s) {
		i := strings.IndexByte(f, '/')
		if i <= 0 {
			return nil, fmt.Errorf("probe path %q: want PORT/PATH, e.g. 8080/healthz", f)
		}
		port, err := strconv.ParseUint(f[:i], 10, 16)
		if err != nil || port == 0 {
			return nil, fmt.Errorf("probe path %q: port %q is not 1-65535", f, f[:i])
		}
		out[uint16(port)] = append(out[uint16(port)], f[i:])
	}
	return out, nil
}

// grpcHealthPath is what the kubelet's grpc probes call (gRPC health checking protocol).
const grpcHealthPath = "/grpc.health.v1.Health/Check"

func (p Policy) modeOf(port uint16) Mode {
	if m, ok := p.Ports[port]; ok {
		return m
	}
	return p.Default
}

func idList(ids []spiffeid.ID) string {
	const show = 3
	var b strings.Builder
	for i, id := range ids[:min(len(ids), show)] {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(id.String())
	}
	if len(ids) > show {
		fmt.Fprintf(&b, " and %d more", len(ids)-show)
	}
	return b.String()
}
