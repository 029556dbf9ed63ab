package verify

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/detourmesh/detour/init/plan"
)

// Landing is where a running proxy recorded a connection.
type Landing struct {
	Listener string         // "outbound" or "inbound"
	Orig     netip.AddrPort // the original destination the proxy read
}

// Observer finds connections in a running proxy's records (its admin port's
// /debug/connections). Landed waits, boundedly, for the connection whose client address is
// client and that the proxy accepted at or after since (a client port is reused, and the
// proxy remembers connections that ended); found is false if the proxy never saw it.
type Observer interface {
	Landed(client netip.AddrPort, since time.Time) (l Landing, found bool, err error)
}

// ProveLive proves the rules of c in the calling thread's network namespace against the
// proxy that runs there, without disturbing it: where Prove listens on the proxy's ports
// itself, ProveLive makes the same connections and asks the proxy (o) where they landed. Its
// connections are short and carry no request: an outbound one to a test address (and one per
// port in ports, e.g. those a foreign rule names), which the proxy relays to that address like
// any destination it does not know; an inbound one to the pod's own address on a port this
// proof holds, which the proxy relays back to the proof; one as the proxy's UID, which must not
// be redirected; and a /live request to the admin port, which must reach the admin server.
func ProveLive(c plan.Config, families []plan.Family, o Observer, ports []uint16) Report {
	var r Report
	for _, f := range families {
		r.Steps = append(r.Steps, proveLiveFamily(c, f, o, ports)...)
	}
	return r
}

func proveLiveFamily(c plan.Config, f plan.Family, o Observer, ports []uint16) []Step {
	network := "tcp4"
	wildcard := netip.IPv4Unspecified()
	if f == plan.IPv6 {
		network, wildcard = "tcp6", netip.IPv6Unspecified()
	}
	step := func(name, status, detail string) Step {
		return Step{Family: f.String(), Name: name, Status: status, Detail: detail}
	}
	own, ok := ownAddress(f)
	if !ok {
		if f == plan.IPv6 {
			return []Step{step("addresses", Skipped, "the namespace has no routable IPv6 address; the IPv6 rules cannot be exercised")}
		}
		return []Step{step("addresses", Failed, "the namespace has no IPv4 address besides loopback")}
	}
	var steps []Step

	test, err := testDestination(c, f)
	if err != nil {
		steps = append(steps, step("outbound", Failed, err.Error()))
	} else {
		targets := []netip.AddrPort{test}
		for _, p := range ports {
			if p != test.Port() && !inRanges(p, c.SkipOutboundPorts) && !slices.Contains(targets, netip.AddrPortFrom(test.Addr(), p)) {
				targets = append(targets, netip.AddrPortFrom(test.Addr(), p))
			}
		}
		for i, dst := range targets {
			name := "outbound"
			if i > 0 {
				name = fmt.Sprintf("outbound-port-%d", dst.Port())
			}
			st, d := proveLanding(network, dst, o, "outbound", "the app", nil, nil)
			steps = append(steps, step(name, st, d))
		}
	}

	// A port of our own on every address, standing in for the app's: the proxy relays the
	// inbound connection to it, and the proxy UID's connection must arrive on it directly.
	ln, app, err := listenNotSkipped(network, wildcard, c.SkipInboundPorts)
	if err != nil {
		steps = append(steps, step("own-address-to-inbound", Failed, err.Error()))
	} else {
		defer ln.Close()
		arrivals := make(chan *net.TCPConn, 8)
		go func() {
			for {
				conn, err := ln.AcceptTCP()
				if err != nil {
					close(arrivals)
					return
				}
				select {
				case arrivals <- conn:
				default:
					conn.Close()
				}
			}
		}()
		dst := netip.AddrPortFrom(own, app)
		// One byte that cannot begin an HTTP request: the proxy relays at once, as opaque TCP,
		// instead of waiting for its protocol detection to time out.
		st, d := proveLanding(network, dst, o, "inbound", "the app", []byte{0}, arrivals)
		steps = append(steps, step("own-address-to-inbound", st, d))
		st, d = proveDirect(network, dst, int(c.ProxyUID), arrivals)
		steps = append(steps, step("proxy-uid-exempt", st, d))
	}

	admin := netip.AddrPortFrom(own, c.AdminPort)
	st, d := proveAdmin(network, admin)
	steps = append(steps, step("admin-port-exempt", st, d))
	return steps
}

// proveLanding dials dst as the caller, sends first (if any), and asks o where the connection
// landed. direct, if not nil, receives the connections arriving at dst itself: one from this
// connection means it was not redirected.
func proveLanding(network string, dst netip.AddrPort, o Observer, want, who string, first []byte, direct <-chan *net.TCPConn) (string, string) {
	start := time.Now()
	conn, err := dial(network, dst, -1)
	if err != nil {
		return Failed, fmt.Sprintf("connecting to %s as %s: %v%s", dst, who, err, dialHint(err))
	}
	defer conn.Close()
	if len(first) > 0 {
		conn.SetWriteDeadline(time.Now().Add(Timeout))
		conn.Write(first)
	}
	local, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return Failed, err.Error()
	}
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	l, found, err := o.Landed(local, start)
	switch {
	case err != nil:
		return Failed, fmt.Sprintf("asking the proxy about the connection %s -> %s: %v", local, dst, err)
	case !found && arrivedDirectly(direct, local):
		return Failed, fmt.Sprintf("%s -> %s was not redirected: it reached its destination directly, and the proxy never saw it", who, dst)
	case !found:
		return Failed, fmt.Sprintf("%s -> %s connected, but the proxy never saw the connection: something else accepted it (a rule that redirects it elsewhere?)", who, dst)
	case l.Listener != want:
		return Failed, fmt.Sprintf("%s -> %s landed on the proxy's %s listener, want its %s listener", who, dst, l.Listener, want)
	case l.Orig != dst:
		return Failed, fmt.Sprintf("%s -> %s landed on the proxy's %s listener, but the proxy read its original destination as %s", who, dst, want, l.Orig)
	}
	return OK, fmt.Sprintf("%s -> %s landed on the proxy's %s listener, destination intact", who, dst, want)
}

// arrivedDirectly reports whether the connection from local is among those already waiting on
// direct; the others are closed.
func arrivedDirectly(direct <-chan *net.TCPConn, local netip.AddrPort) bool {
	for {
		select {
		case a, ok := <-direct:
			if !ok {
				return false
			}
			from := a.RemoteAddr().String()
			a.Close()
			if from == local.String() {
				return true
			}
		default:
			return false
		}
	}
}

// proveDirect dials dst as uid and expects the connection itself, not one relayed by the
// proxy, on the listener behind arrivals.
func proveDirect(network string, dst netip.AddrPort, uid int, arrivals <-chan *net.TCPConn) (string, string) {
	who := fmt.Sprintf("the proxy UID %d", uid)
	conn, err := dial(network, dst, uid)
	if err != nil {
		return Failed, fmt.Sprintf("connecting to %s as %s: %v%s", dst, who, err, dialHint(err))
	}
	defer conn.Close()
	local := conn.LocalAddr().String()
	deadline := time.After(Timeout)
	for {
		select {
		case a, ok := <-arrivals:
			if !ok {
				return Failed, "the proof's listener closed"
			}
			from := a.RemoteAddr().String()
			a.Close()
			if from == local {
				return OK, fmt.Sprintf("%s -> %s arrived directly, not through the proxy", who, dst)
			}
			// The proxy's relay of the inbound proof, or this connection relayed by the proxy:
			// the latter comes after our own would have, so keep reading until the deadline.
		case <-deadline:
			return Failed, fmt.Sprintf("%s -> %s never arrived directly: the proxy's own connections are redirected back into it (a loop)", who, dst)
		}
	}
}

// proveAdmin asks the admin server for /live through the pod's own address: a redirected
// connection would land on the inbound listener, which refuses the proxy's own ports.
func proveAdmin(network string, dst netip.AddrPort) (string, string) {
	conn, err := dial(network, dst, -1)
	if err != nil {
		return Failed, fmt.Sprintf("connecting to the admin port %s: %v%s", dst, err, dialHint(err))
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(Timeout))
	if _, err := conn.Write([]byte("GET /live HTTP/1.0\r\nHost: detour-debug\r\n\r\n")); err != nil {
		return Failed, fmt.Sprintf("writing to the admin port %s: %v", dst, err)
	}
	status, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.") || !strings.Contains(status, " 200") {
		return Failed, fmt.Sprintf("GET /live on %s was not answered by the admin server (%q, %v): the connection was redirected?", dst, strings.TrimSpace(status), err)
	}
	return OK, fmt.Sprintf("the app -> %s reached the admin server (GET /live: %s)", dst, strings.TrimSpace(status))
}

// listenNotSkipped listens on an ephemeral port of addr that the inbound rules do not skip.
func listenNotSkipped(network string, addr netip.Addr, skipped []plan.PortRange) (*net.TCPListener, uint16, error) {
	for range 8 {
		ln, err := net.ListenTCP(network, net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		if err != nil {
			return nil, 0, fmt.Errorf("listening on a port of our own: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
		if !inRanges(port, skipped) {
			return ln, port, nil
		}
		ln.Close()
	}
	return nil, 0, fmt.Errorf("every port tried is in --skip-inbound-ports")
}
