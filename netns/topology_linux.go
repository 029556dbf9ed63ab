package netns

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// BridgeName is the node namespace's bridge that every pod's veth joins.
const BridgeName = "dt0"

var (
	podNet4    = netip.MustParsePrefix("198.18.0.0/16")
	podNet6    = netip.MustParsePrefix("fd00:de70::/64")
	vipNet4    = netip.MustParsePrefix("198.19.0.0/16")
	vipNet6    = netip.MustParsePrefix("fd00:de71::/64")
	gateway4   = netip.MustParseAddr("198.18.0.1")
	gateway6   = netip.MustParseAddr("fd00:de70::1")
	bridgeAddr = net.HardwareAddr{0x02, 0xde, 0x70, 0, 0, 1}
)

// maxPodIndex keeps 198.18.<N/256>.<N%256> inside the /16, off its broadcast.
const maxPodIndex = 0xfffe

// NewTopology creates the node namespace "<prefix>node" with bridge dt0
// (198.18.0.1/16, fd00:de70::1/64) and forwarding on. Close removes it.
func NewTopology(prefix string) (*Topology, error) {
	node, err := Create(prefix + "node")
	if err != nil {
		return nil, fmt.Errorf("creating topology %s: %w", prefix, err)
	}
	t := &Topology{Prefix: prefix, Node: node, next: 2}
	err = node.Do(func() error {
		if err := writeSysctls(
			"net/ipv4/ip_forward=1",
			"net/ipv6/conf/all/forwarding=1",
			"net/ipv6/conf/default/forwarding=1",
			// Addresses usable at once: no duplicate address detection.
			"net/ipv6/conf/all/accept_dad=0",
			"net/ipv6/conf/default/accept_dad=0",
			// VIP traffic enters and leaves through dt0, which makes the
			// kernel send ICMP redirects that only make sense without DNAT;
			// a pod must keep sending VIP traffic to the node.
			"net/ipv4/conf/all/send_redirects=0",
			"net/ipv4/conf/default/send_redirects=0",
		); err != nil {
			return err
		}
		// If br_netfilter is loaded (Docker loads it) it defaults to on in
		// a new namespace too, and would pass bridged pod-to-pod frames
		// through the node's conntrack, hiding a missing MASQUERADE. Keep
		// bridging plain, whoever loaded the module.
		for _, f := range []string{"iptables", "ip6tables", "arptables"} {
			if err := writeSysctls("net/bridge/bridge-nf-call-" + f + "=0"); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		no := false
		br := &netlink.Bridge{
			LinkAttrs: netlink.LinkAttrs{
				Name: BridgeName,
				// A fixed address: otherwise the bridge takes the lowest
				// port's MAC and changes it as pods join, leaving pods with
				// stale neighbour entries for their gateway.
				HardwareAddr: bridgeAddr,
			},
			// No MLD querier here, so snooping could drop neighbour
			// solicitations; flood multicast like a dumb switch.
			MulticastSnooping: &no,
		}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("adding bridge %s: %w", BridgeName, err)
		}
		return linkUpWithAddrs(br, netip.PrefixFrom(gateway4, 16), netip.PrefixFrom(gateway6, 64))
	})
	if err != nil {
		node.Delete()
		return nil, fmt.Errorf("creating topology %s: %w", prefix, err)
	}
	return t, nil
}

// AddPod creates pod namespace "<prefix><name>" joined to dt0 by a veth
// ("vdt<N>" in the node, "eth0" in the pod), with addresses 198.18.0.N and
// fd00:de70::N (N counting from 2) and default routes via the node.
func (t *Topology) AddPod(name string) (*Pod, error) {
	if t.Node == nil {
		return nil, errors.New("adding pod: topology is closed")
	}
	if name == "" {
		return nil, errors.New("adding pod: empty name")
	}
	idx := t.next
	if idx > maxPodIndex {
		return nil, fmt.Errorf("adding pod %s: no pod addresses left", name)
	}
	a4 := podNet4.Addr().As4()
	a4[2], a4[3] = byte(idx>>8), byte(idx)
	a6 := podNet6.Addr().As16()
	a6[14], a6[15] = byte(idx>>8), byte(idx)
	ns, err := Create(t.Prefix + name)
	if err != nil {
		return nil, fmt.Errorf("adding pod %s: %w", name, err)
	}
	pod := &Pod{Name: name, NS: ns, IPv4: netip.AddrFrom4(a4), IPv6: netip.AddrFrom16(a6)}
	if err := t.wirePod(pod, idx); err != nil {
		ns.Delete()
		return nil, fmt.Errorf("adding pod %s: %w", name, err)
	}
	t.next++
	t.Pods = append(t.Pods, pod)
	return pod, nil
}

func (t *Topology) wirePod(pod *Pod, idx int) error {
	// Before eth0 exists, so that it inherits these.
	err := pod.NS.Do(func() error {
		return writeSysctls(
			"net/ipv6/conf/all/accept_dad=0",
			"net/ipv6/conf/default/accept_dad=0",
			"net/ipv4/conf/all/accept_redirects=0",
			"net/ipv4/conf/default/accept_redirects=0",
			"net/ipv6/conf/all/accept_redirects=0",
			"net/ipv6/conf/default/accept_redirects=0",
			// Even without DAD the link-local address stays "tentative"
			// until a work item runs, delayed by up to router_solicitation_delay (1 s).
			"net/ipv6/conf/default/router_solicitation_delay=0",
		)
	})
	if err != nil {
		return err
	}
	podFD, err := unix.Open(pod.NS.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(podFD)

	hostName := fmt.Sprintf("vdt%d", idx)
	err = t.Node.Do(func() error {
		br, err := netlink.LinkByName(BridgeName)
		if err != nil {
			return err
		}
		// The peer is created directly in the pod, so names never clash
		// in the node.
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: hostName, MasterIndex: br.Attrs().Index},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(podFD),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding veth %s: %w", hostName, err)
		}
		if err := netlink.LinkSetUp(veth); err != nil {
			return fmt.Errorf("setting %s up: %w", hostName, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return pod.NS.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := linkUpWithAddrs(eth0, netip.PrefixFrom(pod.IPv4, 16), netip.PrefixFrom(pod.IPv6, 64)); err != nil {
			return err
		}
		for _, gw := range []netip.Addr{gateway4, gateway6} {
			r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("adding default route via %s: %w", gw, err)
			}
		}
		return waitNotTentative(eth0)
	})
}

// waitNotTentative waits, boundedly, until l has its link-local IPv6
// address and no IPv6 address of l is tentative, so that a new pod is
// complete when AddPod returns. The link-local address appears only once
// the veth has carrier, asynchronously: a check before it exists would
// pass and leave it to turn up tentative later.
func waitNotTentative(l netlink.Link) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("listing addresses of %s: %w", l.Attrs().Name, err)
		}
		var tentative []string
		linkLocal := false
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				tentative = append(tentative, a.IPNet.String())
			}
			linkLocal = linkLocal || a.IP.IsLinkLocalUnicast()
		}
		if len(tentative) == 0 && linkLocal {
			return nil
		}
		if time.Now().After(deadline) {
			if !linkLocal {
				return fmt.Errorf("%s got no link-local IPv6 address (no carrier?)", l.Attrs().Name)
			}
			return fmt.Errorf("addresses %v of %s still tentative", tentative, l.Attrs().Name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// linkUpWithAddrs sets l up and gives it addresses, IPv6 ones without
// duplicate address detection so that they are usable at once.
func linkUpWithAddrs(l netlink.Link, addrs ...netip.Prefix) error {
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", l.Attrs().Name, err)
	}
	for _, p := range addrs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("adding %s to %s: %w", p, l.Attrs().Name, err)
		}
	}
	return nil
}

// AddService makes TCP connections to vip reach one of backends, the way
// kube-proxy does it in a node's nat table: PREROUTING jumps to a chain
// whose DNAT rules are chosen with `-m statistic --mode random`, so each
// new connection picks one backend and keeps it. DNATed connections are
// masqueraded as the node, so replies come back through the node to be
// un-NATed even when client and backend share the bridge (or are one pod).
// VIPs are in 198.19.0.0/16 or fd00:de71::/64, backends pod addresses of
// the same family. Pods reach VIPs by their default route; the node itself
// cannot (there are no OUTPUT rules).
func (t *Topology) AddService(vip netip.AddrPort, backends []netip.AddrPort) error {
	if t.Node == nil {
		return errors.New("adding service: topology is closed")
	}
	rules, bin, err := serviceRules(vip, backends)
	if err != nil {
		return fmt.Errorf("adding service %s: %w", vip, err)
	}
	chain := serviceChain(vip)
	if err := t.Node.Run(exec.Command(bin, "-w", "-t", "nat", "-S", chain)); err == nil {
		return fmt.Errorf("adding service %s: it already exists (chain %s)", vip, chain)
	}
	var out strings.Builder
	cmd := exec.Command(bin+"-restore", "-w", "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := t.Node.Run(cmd); err != nil {
		return fmt.Errorf("adding service %s: %s-restore in %s: %w: %s\nrules:\n%s", vip, bin, t.Node.Name, err, strings.TrimSpace(out.String()), rules)
	}
	return nil
}

// SetServiceBackends replaces the backends of a service AddService made, as kube-proxy
// rewrites a service's chain when its endpoints change: connections already made keep their
// backend (conntrack), new ones spread over the new set.
func (t *Topology) SetServiceBackends(vip netip.AddrPort, backends []netip.AddrPort) error {
	if t.Node == nil {
		return errors.New("updating service: topology is closed")
	}
	rules, bin, err := serviceRules(vip, backends)
	if err != nil {
		return fmt.Errorf("updating service %s: %w", vip, err)
	}
	chain := serviceChain(vip)
	// Only the chain's own rules: the PREROUTING and POSTROUTING jumps stay as they are.
	var own strings.Builder
	fmt.Fprintf(&own, "*nat\n:%s - [0:0]\n", chain)
	for _, line := range strings.Split(rules, "\n") {
		if strings.HasPrefix(line, "-A "+chain+" ") {
			own.WriteString(line + "\n")
		}
	}
	own.WriteString("COMMIT\n")
	var out strings.Builder
	flush := exec.Command(bin, "-w", "-t", "nat", "-F", chain)
	flush.Stdout, flush.Stderr = &out, &out
	if err := t.Node.Run(flush); err != nil {
		return fmt.Errorf("updating service %s: flushing %s: %w: %s", vip, chain, err, strings.TrimSpace(out.String()))
	}
	cmd := exec.Command(bin+"-restore", "-w", "--noflush")
	cmd.Stdin = strings.NewReader(own.String())
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := t.Node.Run(cmd); err != nil {
		return fmt.Errorf("updating service %s: %s-restore: %w: %s", vip, bin, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// RemovePod deletes a pod AddPod made; its veth and addresses go with its namespace. Its
// addresses are not given to a later pod.
func (t *Topology) RemovePod(pod *Pod) error {
	i := slices.Index(t.Pods, pod)
	if i < 0 {
		return fmt.Errorf("removing pod %s: not in the topology", pod.Name)
	}
	if err := pod.NS.Delete(); err != nil {
		return fmt.Errorf("removing pod %s: %w", pod.Name, err)
	}
	t.Pods = slices.Delete(t.Pods, i, i+1)
	return nil
}

// serviceChain names the service's chain after a hash of the VIP: chain
// names are limited to 28 characters and an IPv6 VIP is longer.
func serviceChain(vip netip.AddrPort) string {
	sum := sha256.Sum256([]byte(vip.String()))
	return "DT-SVC-" + strings.ToUpper(hex.EncodeToString(sum[:8]))
}

// serviceRules returns the iptables-restore input for a service and the
// iptables binary of its family.
func serviceRules(vip netip.AddrPort, backends []netip.AddrPort) (rules, bin string, err error) {
	vipNet, podNet, bin, host := vipNet4, podNet4, "iptables", "/32"
	if vip.Addr().Is6() {
		vipNet, podNet, bin, host = vipNet6, podNet6, "ip6tables", "/128"
	}
	if !vip.IsValid() || vip.Port() == 0 || !vipNet.Contains(vip.Addr()) {
		return "", "", fmt.Errorf("VIP must be in %s or %s with a port", vipNet4, vipNet6)
	}
	if len(backends) == 0 {
		return "", "", errors.New("no backends")
	}
	for _, b := range backends {
		if !b.IsValid() || b.Port() == 0 || !podNet.Contains(b.Addr()) {
			return "", "", fmt.Errorf("backend %s: must be a pod address in %s with a port", b, podNet)
		}
	}
	chain := serviceChain(vip)
	comment := fmt.Sprintf("-m comment --comment detour-test/service/%s", vip)
	var r strings.Builder
	fmt.Fprintf(&r, "*nat\n:%s - [0:0]\n", chain)
	for i, b := range backends {
		// Rule i takes 1/(n-i) of what the earlier rules left, so every
		// backend gets 1/n of the connections; the last takes the rest.
		stat := ""
		if left := len(backends) - i; left > 1 {
			stat = fmt.Sprintf(" -m statistic --mode random --probability %.10f", 1/float64(left))
		}
		fmt.Fprintf(&r, "-A %s -p tcp %s%s -j DNAT --to-destination %s\n", chain, comment, stat, b)
	}
	fmt.Fprintf(&r, "-A PREROUTING -d %s%s -p tcp -m tcp --dport %d %s -j %s\n", vip.Addr(), host, vip.Port(), comment, chain)
	fmt.Fprintf(&r, "-A POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctorigdst %s --ctorigdstport %d %s -j MASQUERADE\n", vip.Addr(), vip.Port(), comment)
	r.WriteString("COMMIT\n")
	return r.String(), bin, nil
}

// Close deletes every pod namespace and then the node namespace, and
// returns the first error. Links and iptables rules go with them.
func (t *Topology) Close() error {
	if t.Node == nil {
		return nil
	}
	var first error
	for _, p := range t.Pods {
		if err := p.NS.Delete(); err != nil && first == nil {
			first = err
		}
	}
	if err := t.Node.Delete(); err != nil && first == nil {
		first = err
	}
	t.Pods, t.Node = nil, nil
	return first
}

// writeSysctls writes "path=value" settings under /proc/sys. Network
// sysctls belong to the namespace of the calling thread: call it in Do.
func writeSysctls(settings ...string) error {
	for _, s := range settings {
		path, value, _ := strings.Cut(s, "=")
		if err := os.WriteFile("/proc/sys/"+path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s: %w", strings.ReplaceAll(path, "/", "."), err)
		}
	}
	return nil
}
