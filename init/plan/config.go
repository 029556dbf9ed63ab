// Package plan turns the settings of `detour init` into the iptables rules that redirect a
// pod's TCP into its proxy. It is pure: install, remove, check and dry-run are all derived from
// the one Plan it builds, so what is printed is what is installed.
package plan

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Defaults of DESIGN.md; other tools call init with these flag values.
const (
	DefaultInboundPort  = 7143
	DefaultOutboundPort = 7140
	DefaultAdminPort    = 7190
	DefaultProxyUID     = 2102
)

// Config is what `detour init` is told.
type Config struct {
	InboundPort       uint16
	OutboundPort      uint16
	AdminPort         uint16
	ProxyUID          uint32
	SkipInboundPorts  []PortRange
	SkipOutboundPorts []PortRange
	SkipOutboundCIDRs []netip.Prefix
	// PodName and PodNamespace name the pod the rules serve. They change no rule: the record
	// (record.go) keeps them, so `detour debug` finds the pod by name even when its proxy is
	// not running.
	PodName, PodNamespace string
}

// DefaultConfig returns the configuration of DESIGN.md.
func DefaultConfig() Config {
	return Config{
		InboundPort:  DefaultInboundPort,
		OutboundPort: DefaultOutboundPort,
		AdminPort:    DefaultAdminPort,
		ProxyUID:     DefaultProxyUID,
	}
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	for _, p := range []struct {
		name string
		v    uint16
	}{{"inbound-port", c.InboundPort}, {"outbound-port", c.OutboundPort}, {"admin-port", c.AdminPort}} {
		if p.v == 0 {
			errs = append(errs, fmt.Errorf("--%s: port 0 is not a port", p.name))
		}
	}
	if c.InboundPort != 0 && c.InboundPort == c.OutboundPort {
		errs = append(errs, fmt.Errorf("--inbound-port and --outbound-port are both %d: they must differ", c.InboundPort))
	}
	if c.AdminPort != 0 && (c.AdminPort == c.InboundPort || c.AdminPort == c.OutboundPort) {
		errs = append(errs, fmt.Errorf("--admin-port %d collides with a proxy port", c.AdminPort))
	}
	for _, n := range []struct{ flag, v string }{{"pod-name", c.PodName}, {"pod-namespace", c.PodNamespace}} {
		if !validName(n.v) {
			errs = append(errs, fmt.Errorf("--%s %q: want a Kubernetes name (letters, digits, '-', '.', '_', at most 253)", n.flag, n.v))
		}
	}
	if c.ProxyUID == 0 {
		errs = append(errs, errors.New("--proxy-uid 0 is refused: it would exempt every root process of the app from the mesh; run the proxy as its own UID (default 2102)"))
	}
	return errors.Join(errs...)
}

// validName accepts what Kubernetes allows in a pod's name and namespace (and '_'), and the
// empty name: the characters an iptables comment carries without quoting.
func validName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// PortRange is an inclusive range of TCP ports; a single port has First == Last.
type PortRange struct{ First, Last uint16 }

func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d:%d", r.First, r.Last)
}

// Contains reports whether port p is in r.
func (r PortRange) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// ParsePorts parses a comma-separated list of ports and ranges ("22,8000-8100"); empty is none.
func ParsePorts(s string) ([]PortRange, error) {
	var out []PortRange
	for _, f := range splitList(s) {
		lo, hi, isRange := strings.Cut(f, "-")
		first, err := parsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", f, err)
		}
		last := first
		if isRange {
			if last, err = parsePort(hi); err != nil {
				return nil, fmt.Errorf("port range %q: %w", f, err)
			}
			if last < first {
				return nil, fmt.Errorf("port range %q: %d is above %d", f, first, last)
			}
		}
		out = append(out, PortRange{first, last})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("want a port from 1 to 65535")
	}
	return uint16(n), nil
}

// ParseCIDRs parses a comma-separated list of IPv4 and IPv6 prefixes; a bare address means
// that host alone. Host bits set in a prefix are an error: "10.1.2.3/8" is ambiguous.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		var p netip.Prefix
		if strings.Contains(f, "/") {
			var err error
			if p, err = netip.ParsePrefix(f); err != nil {
				return nil, fmt.Errorf("CIDR %q: %w", f, err)
			}
			if p != p.Masked() {
				return nil, fmt.Errorf("CIDR %q has host bits set: did you mean %s?", f, p.Masked())
			}
		} else {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("CIDR %q: not an address or prefix", f)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("CIDR %q: zones are not allowed", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("CIDR %q: write IPv4-mapped addresses as plain IPv4", f)
		}
		out = append(out, p)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
