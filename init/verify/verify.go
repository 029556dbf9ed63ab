// Package verify proves, from inside a pod's network namespace, that the redirect rules do what
// they promise: real connections land on the proxy ports with their original destination, and
// the exemptions (proxy UID, admin port) hold. A rule that is present is not yet a rule that works.
package verify

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/detourmesh/detour/init/plan"
	"github.com/detourmesh/detour/proxy/origdst"
)

// Step is one thing the proof checked.
type Step struct {
	Family string `json:"family"`
	Name   string `json:"name"`
	Status string `json:"status"` // ok, failed or skipped
	Detail string `json:"detail"`
}

// Step statuses.
const (
	OK      = "ok"
	Failed  = "failed"
	Skipped = "skipped"
)

// Report is the outcome of a proof.
type Report struct {
	Steps []Step `json:"steps"`
}

// Err returns the failed steps as one error, or nil.
func (r Report) Err() error {
	var errs []error
	for _, s := range r.Steps {
		if s.Status == Failed {
			errs = append(errs, fmt.Errorf("%s %s: %s", s.Family, s.Name, s.Detail))
		}
	}
	return errors.Join(errs...)
}

// Timeout bounds each connection of the proof. A redirected connection lands at once; only a
// connection that escaped the redirect waits this long.
const Timeout = time.Second

// Prove checks the rules of c for each family in the calling thread's network namespace. It
// briefly listens on the proxy and admin ports; a port already in use (a running proxy) makes
// the steps that need it "skipped", never "ok".
func Prove(c plan.Config, families []plan.Family) Report {
	var r Report
	for _, f := range families {
		r.Steps = append(r.Steps, proveFamily(c, f)...)
	}
	return r
}

type arrival struct {
	listener string
	conn     *net.TCPConn
}

type prover struct {
	family   plan.Family
	network  string
	arrivals chan arrival
	busy     map[string]string // listener name -> why it could not listen
	closers  []func()
}

func proveFamily(c plan.Config, f plan.Family) []Step {
	p := &prover{family: f, network: "tcp4", arrivals: make(chan arrival, 16), busy: map[string]string{}}
	if f == plan.IPv6 {
		p.network = "tcp6"
	}
	defer p.close()
	step := func(name, status, detail string) Step {
		return Step{Family: f.String(), Name: name, Status: status, Detail: detail}
	}
	own, ok := ownAddress(f)
	if !ok {
		if f == plan.IPv6 {
			return []Step{step("addresses", Skipped, "the namespace has no routable IPv6 address; the IPv6 rules are installed but cannot be exercised")}
		}
		return []Step{step("addresses", Failed, "the namespace has no IPv4 address besides loopback: give it one (a pod always has one) or run with --verify=false")}
	}
	wildcard := netip.IPv4Unspecified()
	if f == plan.IPv6 {
		wildcard = netip.IPv6Unspecified()
	}
	p.listen("outbound", netip.AddrPortFrom(wildcard, c.OutboundPort))
	p.listen("inbound", netip.AddrPortFrom(wildcard, c.InboundPort))
	p.listen("admin", netip.AddrPortFrom(own, c.AdminPort))
	direct := p.listenFree("direct", own, c.SkipInboundPorts)

	var steps []Step
	test, err := testDestination(c, f)
	if err != nil {
		steps = append(steps, step("outbound", Failed, err.Error()))
	} else {
		st, d := p.expect("outbound", test, -1, "outbound")
		steps = append(steps, step("outbound", st, d))
	}
	if direct.IsValid() {
		st, d := p.expect("inbound", direct, -1, "inbound")
		steps = append(steps, step("own-address-to-inbound", st, d))
		st, d = p.expect("direct", direct, int(c.ProxyUID), "direct")
		steps = append(steps, step("proxy-uid-exempt", st, d))
	}
	st, d := p.expect("admin", netip.AddrPortFrom(own, c.AdminPort), -1, "admin")
	steps = append(steps, step("admin-port-exempt", st, d))
	return steps
}

// listen opens a listener whose accepted connections are reported as arrivals under name.
func (p *prover) listen(name string, at netip.AddrPort) netip.AddrPort {
	ln, err := net.ListenTCP(p.network, net.TCPAddrFromAddrPort(at))
	if err != nil {
		p.busy[name] = fmt.Sprintf("cannot listen on %s (%v): a running proxy holds it? The connection proof needs it free", at, err)
		return netip.AddrPort{}
	}
	p.closers = append(p.closers, func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			select {
			case p.arrivals <- arrival{name, c}:
			default:
				c.Close()
			}
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// listenFree listens on an ephemeral port of addr that the inbound rules do not skip.
func (p *prover) listenFree(name string, addr netip.Addr, skipped []plan.PortRange) netip.AddrPort {
	for range 8 {
		at := p.listen(name, netip.AddrPortFrom(addr, 0))
		if !at.IsValid() || !inRanges(at.Port(), skipped) {
			return at
		}
		p.closers[len(p.closers)-1]()
		p.closers = p.closers[:len(p.closers)-1]
	}
	return netip.AddrPort{}
}

func (p *prover) close() {
	for _, c := range p.closers {
		c()
	}
	for {
		select {
		case a := <-p.arrivals:
			a.conn.Close()
		default:
			return
		}
	}
}

// errNoSetuid is dial's error when the process may not take another UID.
var errNoSetuid = errors.New("no CAP_SETUID to take the proxy's UID")

// expect dials dst (as uid, or as the caller when uid < 0) and checks that the connection
// lands on the listener want with dst as its original destination.
func (p *prover) expect(want string, dst netip.AddrPort, uid int, needs ...string) (status, detail string) {
	for _, n := range needs {
		if why, busy := p.busy[n]; busy {
			return Skipped, why
		}
	}
	who := "the app"
	if uid >= 0 {
		who = fmt.Sprintf("the proxy UID %d", uid)
	}
	conn, err := dial(p.network, dst, uid)
	if errors.Is(err, errNoSetuid) {
		return Skipped, fmt.Sprintf("connecting as %s needs CAP_SETUID, which this process lacks (an init container with NET_ADMIN and NET_RAW only): the exemption rule is installed but this step cannot exercise it", who)
	}
	if err != nil {
		return Failed, fmt.Sprintf("connecting to %s as %s: %v%s", dst, who, err, dialHint(err))
	}
	defer conn.Close()
	local := conn.LocalAddr().String()
	deadline := time.After(Timeout)
	for {
		select {
		case a := <-p.arrivals:
			if a.conn.RemoteAddr().String() != local {
				a.conn.Close()
				continue // a stray connection, not ours
			}
			defer a.conn.Close()
			if a.listener != want {
				return Failed, fmt.Sprintf("a connection to %s made by %s landed on the %s port, want the %s port", dst, who, a.listener, want)
			}
			orig, err := origdst.Lookup(a.conn)
			if err != nil {
				return Failed, err.Error()
			}
			if orig != dst {
				return Failed, fmt.Sprintf("a connection to %s landed on the %s port but its original destination reads %s", dst, want, orig)
			}
			return OK, fmt.Sprintf("%s -> %s landed on the %s port, original destination %s", who, dst, want, orig)
		case <-deadline:
			return Failed, fmt.Sprintf("a connection to %s made by %s was accepted by something else: it did not reach the %s port", dst, who, want)
		}
	}
}

func dialHint(err error) string {
	if strings.Contains(err.Error(), "unreachable") {
		return " (the namespace has no route there; the outbound proof needs a default route, as a pod has)"
	}
	if strings.Contains(err.Error(), "timeout") {
		return " (the connection was not redirected: it went out to the network)"
	}
	return ""
}

// testDestination picks an address the outbound rules must redirect: one in the benchmarking
// range 198.18.0.0/15 (RFC 2544; fd00:de70::/32 for IPv6), so that if the redirect fails the
// stray connection goes nowhere that matters, on a port and address the rules do not skip.
func testDestination(c plan.Config, f plan.Family) (netip.AddrPort, error) {
	addrs := []string{"198.18.255.254", "198.19.255.254"}
	if f == plan.IPv6 {
		addrs = []string{"fd00:de70:ffff::fffe", "fd00:de71:ffff::fffe"}
	}
	var port uint16
	for p := uint16(9); p != 0; p++ {
		if !inRanges(p, c.SkipOutboundPorts) && p != c.InboundPort && p != c.OutboundPort {
			port = p
			break
		}
	}
	for _, s := range addrs {
		a := netip.MustParseAddr(s)
		skipped := false
		for _, cidr := range c.SkipOutboundCIDRs {
			skipped = skipped || cidr.Contains(a)
		}
		if !skipped && port != 0 {
			return netip.AddrPortFrom(a, port), nil
		}
	}
	return netip.AddrPort{}, errors.New("every test address is in --skip-outbound-cidrs or --skip-outbound-ports: nothing left to prove the outbound redirect with")
}

func inRanges(p uint16, ranges []plan.PortRange) bool {
	for _, r := range ranges {
		if r.Contains(p) {
			return true
		}
	}
	return false
}

// ownAddress returns an address of family f on an interface other than lo, skipping IPv6
// link-local ones, which need a zone to be dialled.
func ownAddress(f plan.Family) (netip.Addr, bool) {
	ifs, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.Is4() == (f == plan.IPv4) && !ip.IsLinkLocalUnicast() {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}
