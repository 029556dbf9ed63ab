package discovery

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one problem in a discovery file. It prints like a compiler diagnostic,
// "discovery.yaml:12: services[0].endpoints[0].address: port 0 is not a valid port", so an editor
// can jump to it.
type Error struct {
	File  string // the file name given to Parse
	Line  int    // 1-based line; 0 when the YAML scanner did not say
	Field string // where in the document, e.g. "services[0].endpoints[1].weight"; empty for syntax errors
	Msg   string // what is wrong and, where it helps, what to write instead
}

// Error formats the problem as file:line: field: message.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem Parse found in a file (up to maxErrors), in document order. It
// prints one problem per line.
type ErrorList []*Error

// Error formats every problem, one per line.
func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap lets errors.As find the individual *Error values.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// maxErrors bounds the problems Parse reports for one file: enough to fix a batch at a time,
// few enough that a log line stays readable.
const maxErrors = 10

// MaxFileSize bounds the discovery file Parse accepts. A generated file for thousands of
// endpoints stays far below it; anything larger is a mistake (a wrong path, a log file).
const MaxFileSize = 16 << 20

// Parse reads a discovery file (shared/DESIGN.md "Discovery file") and returns the snapshot it
// describes. name is used only in error messages. On failure the error is an ErrorList whose
// entries (*Error) name the line and field of each problem.
//
// The format is strict, because a typo in a mesh's routing table should stop a reload, not
// silently send traffic elsewhere:
//   - unknown fields, duplicate keys, YAML anchors/aliases/merge keys and extra documents are
//     errors;
//   - an empty file is an error (an editor truncating a file mid-write must not erase every
//     service); write "services: []" to declare none;
//   - addresses are "IP:port" VIPs or "host:port" authorities, port 1..65535, each selecting at
//     most one service across the whole file;
//   - endpoint addresses are "IP:port", unique within their service;
//   - weight is 1..4294967295 and defaults to 1. Weight 0 is an error, not "drain": removing the
//     endpoint drains it, and a zero weight would otherwise have to mean something different to
//     every balancer;
//   - identity, when present, must be a spiffe:// ID in the file's trust domain.
func Parse(name string, data []byte) (*Snapshot, error) {
	p := &parser{file: name}
	td, services := p.parse(data)
	if len(p.errs) > 0 {
		if p.more > 0 {
			p.errs[len(p.errs)-1].Msg += fmt.Sprintf(" (and %d more problems)", p.more)
		}
		return nil, p.errs
	}
	return NewSnapshot(td, Revision(data), services), nil
}

type parser struct {
	file string
	errs ErrorList
	more int // errors past maxErrors, reported as a count
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.add(&Error{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) add(e *Error) {
	if len(p.errs) >= maxErrors {
		p.more++
		return
	}
	p.errs = append(p.errs, e)
}

var yamlLineError = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 scanner or parser error into an *Error with the line it names.
func (p *parser) syntaxError(err error) {
	msg := err.Error()
	line := 0
	if m := yamlLineError.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	p.add(&Error{File: p.file, Line: line, Msg: "invalid YAML: " + msg})
}

func (p *parser) parse(data []byte) (td TrustDomain, services []*Service) {
	if len(data) > MaxFileSize {
		p.add(&Error{File: p.file, Msg: fmt.Sprintf("file is %d bytes, more than the %d a discovery file may have", len(data), MaxFileSize)})
		return "", nil
	}
	// yaml.v3 has panicked on malformed input before (CVE-2022-28948); a routing table reload
	// must fail, not take the proxy down.
	defer func() {
		if r := recover(); r != nil {
			p.errs, p.more = nil, 0
			p.add(&Error{File: p.file, Msg: fmt.Sprintf("invalid YAML: parser failed: %v", r)})
			td, services = "", nil
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.add(&Error{File: p.file, Line: 1, Msg: `file is empty: write "services: []" to declare no services`})
		} else {
			p.syntaxError(err)
		}
		return "", nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		p.errorf(&extra, "", "a discovery file holds one YAML document; remove the second one (after ---)")
		return "", nil
	case !errors.Is(err, io.EOF):
		p.syntaxError(err)
		return "", nil
	}
	if len(doc.Content) != 1 {
		p.errorf(&doc, "", "file is empty: write \"services: []\" to declare no services")
		return "", nil
	}
	return p.document(doc.Content[0])
}

// fields walks a mapping node, reporting duplicate and unknown keys; fn gets each known key
// with its value node. It returns the keys seen.
func (p *parser) fields(n *yaml.Node, path string, known []string, fn func(key string, v *yaml.Node)) map[string]bool {
	if !p.kind(n, path, yaml.MappingNode, "a mapping of fields") {
		return nil
	}
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, path, "field names must be plain strings")
			continue
		}
		key := k.Value
		field := join(path, key)
		if seen[key] {
			p.errorf(k, field, "field appears twice")
			continue
		}
		seen[key] = true
		if !contains(known, key) {
			if k.ShortTag() == "!!merge" {
				p.errorf(k, path, "merge keys (<<) are not supported: write the fields out")
			} else {
				p.errorf(k, field, "unknown field (known fields: %s)", strings.Join(known, ", "))
			}
			continue
		}
		if v.Kind == yaml.AliasNode {
			p.errorf(v, field, "YAML aliases are not supported: write the value out")
			continue
		}
		fn(key, v)
	}
	return seen
}

func (p *parser) require(seen map[string]bool, n *yaml.Node, path string, keys ...string) {
	if seen == nil {
		return
	}
	for _, k := range keys {
		if !seen[k] {
			p.errorf(n, path, "missing field %q", k)
		}
	}
}

func (p *parser) kind(n *yaml.Node, path string, want yaml.Kind, what string) bool {
	if n.Kind == want {
		return true
	}
	if n.Kind == yaml.AliasNode {
		p.errorf(n, path, "YAML aliases are not supported: write the value out")
		return false
	}
	p.errorf(n, path, "want %s, got %s", what, describe(n))
	return false
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "nothing (null)"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

// str returns a scalar's text. Numbers and booleans are taken as written (zone: 1 is "1").
func (p *parser) str(n *yaml.Node, path string) (string, bool) {
	if !p.kind(n, path, yaml.ScalarNode, "a string") {
		return "", false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return n.Value, true
	}
	p.errorf(n, path, "want a string, got %s", describe(n))
	return "", false
}

func (p *parser) list(n *yaml.Node, path string) []*yaml.Node {
	if !p.kind(n, path, yaml.SequenceNode, "a list") {
		return nil
	}
	return n.Content
}

// loc remembers where a name or address was first defined, for duplicate errors.
type loc struct {
	service string
	line    int
}

type docState struct {
	td          TrustDomain
	names       map[string]int
	addrs       map[netip.AddrPort]loc
	authorities map[string]loc
}

func (p *parser) document(root *yaml.Node) (TrustDomain, []*Service) {
	st := &docState{
		td:          DefaultTrustDomain,
		names:       make(map[string]int),
		addrs:       make(map[netip.AddrPort]loc),
		authorities: make(map[string]loc),
	}
	// The trust domain validates identities, so read it before the services whatever the key order.
	var servicesNode *yaml.Node
	seen := p.fields(root, "", []string{"trustDomain", "services"}, func(key string, v *yaml.Node) {
		switch key {
		case "trustDomain":
			if s, ok := p.str(v, key); ok {
				td, err := ParseTrustDomain(s)
				if err != nil {
					p.errorf(v, key, "%v", err)
					return
				}
				st.td = td
			}
		case "services":
			servicesNode = v
		}
	})
	p.require(seen, root, "", "services")
	var services []*Service
	if servicesNode != nil {
		for i, n := range p.list(servicesNode, "services") {
			if svc := p.service(st, n, "services["+strconv.Itoa(i)+"]"); svc != nil {
				services = append(services, svc)
			}
		}
	}
	return st.td, services
}

func (p *parser) service(st *docState, n *yaml.Node, path string) *Service {
	svc := &Service{}
	var addrNodes, epNodes []*yaml.Node
	pp := newPolicyParser(p, path)
	known := append([]string{"name", "addresses", "protocol", "balancer", "endpoints"}, policyFields...)
	seen := p.fields(n, path, known, func(key string, v *yaml.Node) {
		field := join(path, key)
		if contains(policyFields, key) {
			pp.field(key, v)
			return
		}
		switch key {
		case "name":
			s, ok := p.str(v, field)
			if !ok {
				return
			}
			if err := checkServiceName(s); err != nil {
				p.errorf(v, field, "%v", err)
				return
			}
			if line, dup := st.names[s]; dup {
				p.errorf(v, field, "service %q is already defined at line %d", s, line)
				return
			}
			st.names[s] = v.Line
			svc.Name = s
		case "addresses":
			addrNodes = p.list(v, field)
			if v.Kind == yaml.SequenceNode && len(v.Content) == 0 {
				p.errorf(v, field, "a service needs at least one address (a VIP like \"198.19.0.10:80\" or an authority like \"stockdata.stocks:80\")")
			}
		case "protocol":
			if s, ok := p.str(v, field); ok {
				proto, ok := ParseProtocol(s)
				if !ok {
					p.errorf(v, field, "unknown protocol %q (want auto, http1, http2 or opaque)", s)
				}
				svc.Protocol = proto
			}
		case "balancer":
			if s, ok := p.str(v, field); ok {
				b, ok := ParseBalancer(s)
				if !ok {
					p.errorf(v, field, "unknown balancer %q (want p2c-ewma or round-robin)", s)
				}
				svc.Balancer = b
			}
		case "endpoints":
			if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null" {
				return // "endpoints:" with no value: none, like []
			}
			epNodes = p.list(v, field)
		}
	})
	if seen == nil {
		return nil
	}
	p.require(seen, n, path, "name", "addresses")
	svc.Policy = pp.finish(n)
	for i, v := range addrNodes {
		field := path + ".addresses[" + strconv.Itoa(i) + "]"
		s, ok := p.str(v, field)
		if !ok {
			continue
		}
		ap, authority, err := parseDestination(s)
		if err != nil {
			p.errorf(v, field, "%v", err)
			continue
		}
		here := loc{service: svc.Name, line: v.Line}
		if authority != "" {
			if prev, dup := st.authorities[authority]; dup {
				p.errorf(v, field, "%s", duplicate(authority, prev))
				continue
			}
			st.authorities[authority] = here
			svc.Authorities = append(svc.Authorities, authority)
			continue
		}
		if prev, dup := st.addrs[ap]; dup {
			p.errorf(v, field, "%s", duplicate(ap.String(), prev))
			continue
		}
		st.addrs[ap] = here
		svc.Addresses = append(svc.Addresses, ap)
	}
	epAddrs := make(map[netip.AddrPort]int, len(epNodes))
	for i, v := range epNodes {
		field := path + ".endpoints[" + strconv.Itoa(i) + "]"
		if ep, ok := p.endpoint(st, v, field, epAddrs); ok {
			svc.Endpoints = append(svc.Endpoints, ep)
		}
	}
	return svc
}

func duplicate(addr string, prev loc) string {
	if prev.service == "" {
		return fmt.Sprintf("%s is already used at line %d; an address selects one service", addr, prev.line)
	}
	return fmt.Sprintf("%s is already used by service %q at line %d; an address selects one service", addr, prev.service, prev.line)
}

func (p *parser) endpoint(st *docState, n *yaml.Node, path string, epAddrs map[netip.AddrPort]int) (Endpoint, bool) {
	ep := Endpoint{Weight: 1}
	ok := true
	seen := p.fields(n, path, []string{"address", "identity", "weight", "zone", "forZones"}, func(key string, v *yaml.Node) {
		field := join(path, key)
		switch key {
		case "address":
			s, sok := p.str(v, field)
			if !sok {
				ok = false
				return
			}
			ap, err := parseAddrPort(s)
			if err != nil {
				p.errorf(v, field, "%v", err)
				ok = false
				return
			}
			if line, dup := epAddrs[ap]; dup {
				p.errorf(v, field, "endpoint %s is already listed at line %d", ap, line)
				ok = false
				return
			}
			epAddrs[ap] = v.Line
			ep.Addr = ap
		case "identity":
			s, sok := p.str(v, field)
			if !sok {
				ok = false
				return
			}
			if s == "" {
				return // explicitly not meshed
			}
			if err := st.td.CheckID(s); err != nil {
				p.errorf(v, field, "%v", err)
				ok = false
				return
			}
			ep.Identity = s
		case "weight":
			w, err := parseWeight(v)
			if err != nil {
				p.errorf(v, field, "%v", err)
				ok = false
				return
			}
			ep.Weight = w
		case "zone":
			s, sok := p.str(v, field)
			if !sok {
				ok = false
				return
			}
			if err := checkZone(s); err != nil {
				p.errorf(v, field, "%v", err)
				ok = false
				return
			}
			ep.Zone = s
		case "forZones":
			var zones []string
			for i, zn := range p.list(v, field) {
				s, sok := p.str(zn, fmt.Sprintf("%s[%d]", field, i))
				if !sok {
					ok = false
					return
				}
				zones = append(zones, s)
			}
			fz, err := CheckForZones(zones)
			if err != nil {
				p.errorf(v, field, "%v", err)
				ok = false
				return
			}
			ep.ForZones = fz
		}
	})
	if seen == nil {
		return ep, false
	}
	p.require(seen, n, path, "address")
	return ep, ok && seen["address"]
}

func parseWeight(v *yaml.Node) (uint32, error) {
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" {
		return 0, fmt.Errorf("want an integer 1..%d, got %s", uint32(1<<32-1), describe(v))
	}
	var w int64
	if err := v.Decode(&w); err != nil || w < 0 || w > 1<<32-1 {
		return 0, fmt.Errorf("%s is out of range: want 1..%d", v.Value, uint32(1<<32-1))
	}
	if w == 0 {
		return 0, errors.New("weight 0 is not allowed: remove the endpoint to drain it")
	}
	return uint32(w), nil
}

// parseDestination parses a service address: an IP VIP ("198.19.0.10:80", "[fd00::10]:80") or
// a host:port authority, returned lower case with a canonical port.
func parseDestination(s string) (netip.AddrPort, string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		ap, err = checkAddrPort(ap)
		return ap, "", err
	}
	host, port := splitAuthority(s)
	if port == "" {
		if _, err := netip.ParseAddr(host); err == nil {
			return netip.AddrPort{}, "", fmt.Errorf("%q has no port: write %s", s, netip.AddrPortFrom(mustAddr(host), 80))
		}
		return netip.AddrPort{}, "", fmt.Errorf("%q has no port: write %q (authorities are host:port)", s, s+":80")
	}
	if strings.HasPrefix(s, "[") || strings.Count(host, ":") > 0 {
		return netip.AddrPort{}, "", fmt.Errorf("%q is not a valid IP address and port", s)
	}
	p, ok := parsePort(port)
	if !ok {
		return netip.AddrPort{}, "", fmt.Errorf("%q: port %q is not a port 1..65535", s, port)
	}
	if err := checkHostname(host); err != nil {
		return netip.AddrPort{}, "", fmt.Errorf("%q is neither IP:port nor host:port: %v", s, err)
	}
	// Canonical form, as LookupAuthority normalizes what it is asked.
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return netip.AddrPort{}, host + ":" + strconv.Itoa(int(p)), nil
}

func mustAddr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

// parseAddrPort parses an endpoint address, which must be a literal IP and port.
func parseAddrPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		if host, port := splitAuthority(s); port == "" {
			if _, aerr := netip.ParseAddr(host); aerr == nil {
				return netip.AddrPort{}, fmt.Errorf("%q has no port", s)
			}
		}
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address and port (endpoints are addresses like 198.18.0.11:8080 or [fd00:de70::11]:8080)", s)
	}
	return checkAddrPort(ap)
}

func checkAddrPort(ap netip.AddrPort) (netip.AddrPort, error) {
	switch {
	case ap.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("%s: port 0 is not a valid port", ap)
	case ap.Addr().Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("%s: addresses with an IPv6 zone are not supported", ap)
	case ap.Addr().Unmap().IsUnspecified(): // ::ffff:0.0.0.0 is 0.0.0.0 once unmapped
		return netip.AddrPort{}, fmt.Errorf("%s: the unspecified address is not a destination", ap)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// checkHostname validates a DNS name (RFC 1123 labels), allowing upper case.
func checkHostname(h string) error {
	h = strings.TrimSuffix(h, ".")
	if h == "" {
		return errors.New("empty host")
	}
	if len(h) > 253 {
		return errors.New("host name is longer than 253 bytes")
	}
	allDigits := true
	for label := range strings.SplitSeq(h, ".") {
		if label == "" {
			return errors.New("empty label in host name")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q is longer than 63 bytes", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		allDigits = true
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case '0' <= c && c <= '9':
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '-':
				allDigits = false
			default:
				return fmt.Errorf("character %q is not allowed in a host name", c)
			}
		}
	}
	if allDigits {
		// RFC 3696 §2: a top-level label is never all digits; this is a mistyped IP address.
		return errors.New("looks like a mistyped IP address")
	}
	return nil
}

// checkServiceName accepts namespace-qualified Kubernetes names: RFC 1123 labels joined by dots.
func checkServiceName(s string) error {
	if s == "" {
		return errors.New("service name is empty")
	}
	if err := checkHostname(s); err != nil || s != strings.ToLower(s) || strings.HasSuffix(s, ".") {
		return fmt.Errorf("service name %q is not a lower-case DNS name like \"stockdata.stocks\"", s)
	}
	return nil
}

func checkZone(s string) error {
	if len(s) > 253 {
		return errors.New("zone is longer than 253 bytes")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("zone %q contains a control character", s)
		}
	}
	return nil
}

// maxForZones is the most zones one endpoint may be hinted for (Kubernetes allows 8).
const maxForZones = 8

// CheckForZones validates an endpoint's zone hints and returns a copy of them, or nil for none.
func CheckForZones(zones []string) ([]string, error) {
	if len(zones) == 0 {
		return nil, nil
	}
	if len(zones) > maxForZones {
		return nil, fmt.Errorf("%d zone hints; at most %d", len(zones), maxForZones)
	}
	for i, z := range zones {
		if z == "" {
			return nil, errors.New("an empty zone hint")
		}
		if err := checkZone(z); err != nil {
			return nil, err
		}
		if slices.Contains(zones[:i], z) {
			return nil, fmt.Errorf("zone hint %q appears twice", z)
		}
	}
	return slices.Clone(zones), nil
}

// Revision is the revision of a discovery file's bytes: the first 12 hex digits of its SHA-256,
// the same prefix `sha256sum` prints.
func Revision(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:6])
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
