package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

var backends = []string{"legacy", "nft"}

// family picks a pod's address of one IP family.
type family struct {
	name string
	addr func(*netns.Pod) netip.Addr
	any  netip.Addr
}

var families = []family{
	{"IPv4", func(p *netns.Pod) netip.Addr { return p.IPv4 }, netip.IPv4Unspecified()},
	{"IPv6", func(p *netns.Pod) netip.Addr { return p.IPv6 }, netip.IPv6Unspecified()},
}

func addPod(t testing.TB, topo *netns.Topology, name string) *netns.Pod {
	t.Helper()
	p, err := topo.AddPod(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInitRedirectsWhatItShould installs the rules in a client and a server pod and checks,
// with real connections across the node bridge, where each kind of connection lands.
func TestInitRedirectsWhatItShould(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			topo := nstest.Topology(t)
			client := addPod(t, topo, "client")
			server := addPod(t, topo, "server")
			peer := addPod(t, topo, "peer")         // not meshed
			external := addPod(t, topo, "external") // in the client's skipped CIDRs
			mustDetour(t, client.NS, "init", "--backend", backend, "--ipv6", "on",
				"--skip-outbound-ports", "5432,6000-6010",
				"--skip-outbound-cidrs", fmt.Sprintf("%s/32,%s/128", external.IPv4, external.IPv6))
			mustDetour(t, server.NS, "init", "--backend", backend, "--ipv6", "on", "--skip-inbound-ports", "2222")

			for _, fam := range families {
				t.Run(fam.name, func(t *testing.T) {
					port := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(fam.any, p) }
					outbound := listen(t, client.NS, port(7140))
					inbound := listen(t, server.NS, port(7143))
					peerAddr := fam.addr(peer)

					t.Run("an outbound connection to any address lands on 7140 with its original destination", func(t *testing.T) {
						dst := netip.MustParseAddrPort("198.19.5.5:80")
						if fam.name == "IPv6" {
							dst = netip.MustParseAddrPort("[fd00:de71::55]:80")
						}
						c := dial(t, client.NS, dst)
						outbound.expect(t, c.LocalAddr().String(), dst)
					})
					t.Run("a connection from another pod lands on 7143 with its original destination", func(t *testing.T) {
						dst := netip.AddrPortFrom(fam.addr(server), 8080)
						c := dial(t, peer.NS, dst)
						inbound.expect(t, c.LocalAddr().String(), dst)
					})
					t.Run("the proxy UID is not redirected", func(t *testing.T) {
						direct := listen(t, peer.NS, netip.AddrPortFrom(peerAddr, 8080))
						url := fmt.Sprintf("http://%s/", netip.AddrPortFrom(peerAddr, 8080))
						curl := exec.Command("curl", "-s", "-m", "1", "-o", "/dev/null", url)
						netns.AsUID(curl, 2102, 2102)
						if err := client.NS.Start(curl); err != nil {
							t.Fatal(err)
						}
						t.Cleanup(func() { curl.Process.Kill(); curl.Wait() })
						c := direct.next(t)
						if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != fam.addr(client) {
							t.Fatalf("connection came from %s, want the client pod", got)
						}
						outbound.quiet(t)
					})
					t.Run("skipped outbound ports go straight out", func(t *testing.T) {
						for _, p := range []uint16{5432, 6005} {
							direct := listen(t, peer.NS, netip.AddrPortFrom(peerAddr, p))
							c := dial(t, client.NS, netip.AddrPortFrom(peerAddr, p))
							direct.expect(t, c.LocalAddr().String(), netip.AddrPortFrom(peerAddr, p))
						}
						outbound.quiet(t)
					})
					t.Run("skipped outbound CIDRs go straight out", func(t *testing.T) {
						dst := netip.AddrPortFrom(fam.addr(external), 80)
						direct := listen(t, external.NS, dst)
						c := dial(t, client.NS, dst)
						direct.expect(t, c.LocalAddr().String(), dst)
						outbound.quiet(t)
					})
					t.Run("the admin port and skipped inbound ports are not redirected", func(t *testing.T) {
						for _, p := range []uint16{7190, 2222} {
							dst := netip.AddrPortFrom(fam.addr(server), p)
							direct := listen(t, server.NS, dst)
							c := dial(t, peer.NS, dst)
							direct.expect(t, c.LocalAddr().String(), dst)
						}
						inbound.quiet(t)
					})
				})
			}
		})
	}
}

var saveNoise = regexp.MustCompile(`(?m)^#.*\n|\[\d+:\d+\]`)

// saveAll is every table of both families of one backend in ns, without dates and counters.
func saveAll(t testing.TB, ns *netns.NS, backend string) string {
	t.Helper()
	var b strings.Builder
	for _, bin := range []string{"iptables-" + backend + "-save", "ip6tables-" + backend + "-save"} {
		var out strings.Builder
		cmd := exec.Command(bin)
		cmd.Stdout = &out
		if err := ns.Run(cmd); err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		b.WriteString("## " + bin + "\n" + dropEmptyTables(saveNoise.ReplaceAllString(out.String(), "")))
	}
	return b.String()
}

// dropEmptyTables leaves out tables with no rules and no chains of their own: an empty table is
// as good as an absent one, and iptables offers no way to delete a table.
func dropEmptyTables(save string) string {
	var out, table strings.Builder
	keep := false
	for line := range strings.Lines(save) {
		table.WriteString(line)
		switch {
		case strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, ":") && strings.Contains(line, " - "):
			keep = true
		case line == "COMMIT\n":
			if keep {
				out.WriteString(table.String())
			}
			table.Reset()
			keep = false
		}
	}
	return out.String()
}

func ipt(t testing.TB, ns *netns.NS, bin string, args ...string) {
	t.Helper()
	var stderr strings.Builder
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	if err := ns.Run(cmd); err != nil {
		t.Fatalf("%s %v: %v: %s", bin, args, err, stderr.String())
	}
}

func TestInitIsIdempotentAndRemovesOnlyItsOwn(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			topo := nstest.Topology(t)
			pod := addPod(t, topo, "pod")
			// Rules that were there before Detour, in nat and filter, IPv4 and IPv6.
			ipt(t, pod.NS, "iptables-"+backend, "-t", "nat", "-A", "OUTPUT", "-d", "198.18.77.0/24", "-j", "RETURN")
			ipt(t, pod.NS, "iptables-"+backend, "-t", "nat", "-N", "USER_NAT")
			ipt(t, pod.NS, "iptables-"+backend, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9", "-j", "USER_NAT")
			ipt(t, pod.NS, "iptables-"+backend, "-A", "INPUT", "-s", "198.18.99.0/24", "-j", "DROP")
			ipt(t, pod.NS, "ip6tables-"+backend, "-t", "nat", "-A", "OUTPUT", "-d", "fd00:de70:77::/64", "-j", "RETURN")
			before := saveAll(t, pod.NS, backend)

			mustDetour(t, pod.NS, "init", "--backend", backend)
			once := saveAll(t, pod.NS, backend)
			if !strings.Contains(once, "detour/outbound/redirect") || !strings.Contains(once, "USER_NAT") {
				t.Fatalf("after init:\n%s", once)
			}
			mustDetour(t, pod.NS, "init", "--backend", backend)
			if twice := saveAll(t, pod.NS, backend); twice != once {
				t.Fatalf("a second init changed the rules:\n%s\nwant\n%s", twice, once)
			}

			mustDetour(t, pod.NS, "init", "--backend", backend, "--skip-outbound-ports", "3306", "--inbound-port", "15006")
			changed := saveAll(t, pod.NS, backend)
			for _, want := range []string{"--dport 3306", "--to-ports 15006"} {
				if !strings.Contains(changed, want) {
					t.Errorf("after changing flags, no %q in\n%s", want, changed)
				}
			}
			for _, jump := range []string{"-j DETOUR_INBOUND", "-j DETOUR_OUTBOUND"} {
				// Per family: one jump from a built-in chain, plus the own-address jump for inbound.
				want := 2
				if jump == "-j DETOUR_INBOUND" {
					want = 4
				}
				if n := strings.Count(changed, jump); n != want {
					t.Errorf("%d rules with %q after a re-init with new flags, want %d:\n%s", n, jump, want, changed)
				}
			}

			out := mustDetour(t, pod.NS, "init", "--remove")
			if !strings.Contains(out, "removed") {
				t.Errorf("--remove said %q", out)
			}
			if after := saveAll(t, pod.NS, backend); after != before {
				t.Fatalf("--remove left\n%s\nwant exactly what was there before\n%s", after, before)
			}
			if out := mustDetour(t, pod.NS, "init", "--remove"); !strings.Contains(out, "no Detour rules") {
				t.Errorf("a second --remove said %q", out)
			}
		})
	}
}

func TestInitCheck(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			topo := nstest.Topology(t)
			pod := addPod(t, topo, "pod")
			if r := detour(t, pod.NS, nil, "init", "--check"); r.err == nil || !strings.Contains(r.stderr, "no Detour rules are installed") {
				t.Fatalf("--check before init: %v, %s", r.err, r.stderr)
			}
			mustDetour(t, pod.NS, "init", "--backend", backend)
			var rep struct {
				Proof struct {
					Steps []struct{ Family, Name, Status string }
				}
			}
			if err := json.Unmarshal([]byte(mustDetour(t, pod.NS, "init", "--check", "-o", "json")), &rep); err != nil {
				t.Fatal(err)
			}
			if len(rep.Proof.Steps) != 8 {
				t.Fatalf("want 8 proof steps (4 per family), got %+v", rep.Proof.Steps)
			}
			for _, s := range rep.Proof.Steps {
				if s.Status != "ok" {
					t.Errorf("proof step %+v", s)
				}
			}
			before := saveAll(t, pod.NS, backend)
			ipt(t, pod.NS, "iptables-"+backend, "-t", "nat", "-D", "DETOUR_OUTBOUND", "-m", "owner", "--uid-owner", "2102",
				"-m", "comment", "--comment", "detour/outbound/skip-proxy-uid", "-j", "RETURN")
			r := detour(t, pod.NS, nil, "init", "--check")
			if r.err == nil || !strings.Contains(r.stderr, "IPv4: missing in DETOUR_OUTBOUND: -m owner --uid-owner 2102") {
				t.Fatalf("--check after deleting a rule by hand: %v\n%s", r.err, r.stderr)
			}
			if after := saveAll(t, pod.NS, backend); after == before {
				t.Fatal("the hand deletion did not happen")
			}
			mustDetour(t, pod.NS, "init", "--backend", backend)
			mustDetour(t, pod.NS, "init", "--check")
		})
	}
}

func TestInitReportsMixedBackends(t *testing.T) {
	topo := nstest.Topology(t)
	pod := addPod(t, topo, "pod")
	mustDetour(t, pod.NS, "init", "--backend", "legacy")
	if out := mustDetour(t, pod.NS, "init"); !strings.Contains(out, "iptables-legacy") {
		t.Errorf("auto after a legacy install should stay on legacy: %s", out)
	}
	r := detour(t, pod.NS, nil, "init", "--backend", "nft")
	if r.err == nil || !strings.Contains(r.stderr, "already installed with iptables-legacy") {
		t.Fatalf("init --backend nft over legacy rules: %v\n%s", r.err, r.stderr)
	}
	ipt(t, pod.NS, "iptables-nft", "-t", "nat", "-A", "OUTPUT", "-d", "198.18.66.0/24", "-j", "RETURN")
	for _, args := range [][]string{{"init"}, {"init", "--check"}} {
		r := detour(t, pod.NS, nil, args...)
		if r.err == nil || !strings.Contains(r.stderr, "both iptables-legacy") {
			t.Errorf("detour %v with rules in both backends: %v\n%s", args, r.err, r.stderr)
		}
	}
}

func TestInitRefusesBadInputAndChangesNothing(t *testing.T) {
	topo := nstest.Topology(t)
	pod := addPod(t, topo, "pod")
	noIPTables := func(c *exec.Cmd) { c.Env = append(os.Environ(), "PATH=/nonexistent") }
	asNobody := func(c *exec.Cmd) { netns.AsUID(c, 65534, 65534) }
	tests := []struct {
		name string
		prep func(*exec.Cmd)
		args []string
		want string
	}{
		{"a port above 65535", nil, []string{"--inbound-port", "70000"}, "--inbound-port"},
		{"port zero in a skip list", nil, []string{"--skip-outbound-ports", "0"}, "--skip-outbound-ports"},
		{"a CIDR with host bits", nil, []string{"--skip-outbound-cidrs", "10.1.2.3/8"}, "did you mean 10.0.0.0/8"},
		{"proxy UID 0", nil, []string{"--proxy-uid", "0"}, "--proxy-uid 0 is refused"},
		{"proxy UID 0 from the environment", func(c *exec.Cmd) { c.Env = append(os.Environ(), "DETOUR_PROXY_UID=0") }, nil, "--proxy-uid 0 is refused"},
		{"an unknown backend", nil, []string{"--backend", "ebpf"}, `--backend "ebpf"`},
		{"two modes at once", nil, []string{"--check", "--remove"}, "exclude each other"},
		{"no iptables binary", noIPTables, nil, "not found: install the iptables package"},
		{"no CAP_NET_ADMIN", asNobody, nil, "needs CAP_NET_ADMIN"},
	}
	before := saveAll(t, pod.NS, "nft") + saveAll(t, pod.NS, "legacy")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := detour(t, pod.NS, tt.prep, append([]string{"init"}, tt.args...)...)
			if r.err == nil || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %v, stderr %q, want a failure saying %q", r.err, r.stderr, tt.want)
			}
			if after := saveAll(t, pod.NS, "nft") + saveAll(t, pod.NS, "legacy"); after != before {
				t.Fatalf("a refused init changed the rules:\n%s", after)
			}
		})
	}
}

// TestInitFailsWhenIPv6RulesCannotBeInstalled: a namespace with IPv6 whose IPv6 rules fail
// must not be left with IPv4 rules only (a silent IPv6 bypass of the mesh).
func TestInitFailsWhenIPv6RulesCannotBeInstalled(t *testing.T) {
	topo := nstest.Topology(t)
	pod := addPod(t, topo, "pod")
	// A PATH where ip6tables-nft-restore fails as it does on a kernel without the IPv6 nat table.
	dir := t.TempDir()
	for _, name := range []string{"iptables-nft", "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft", "ip6tables-nft-save",
		"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy", "ip6tables-legacy-save", "ip6tables-legacy-restore"} {
		target, err := exec.LookPath(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	script := "#!/bin/sh\necho \"ip6tables-restore v1.8.9 (nf_tables): can't initialize ip6tables table \\`nat': Table does not exist\" >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(dir, "ip6tables-nft-restore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	before := saveAll(t, pod.NS, "nft")
	r := detour(t, pod.NS, func(c *exec.Cmd) { c.Env = append(os.Environ(), "PATH="+dir) }, "init", "--backend", "nft")
	if r.err == nil || !strings.Contains(r.stderr, "installing IPv6 rules") || !strings.Contains(r.stderr, "nat table") {
		t.Fatalf("init with broken IPv6: %v\n%s", r.err, r.stderr)
	}
	if after := saveAll(t, pod.NS, "nft"); after != before {
		t.Fatalf("a failed IPv6 install left IPv4 rules behind:\n%s", after)
	}
}

func TestInitTakesOutRulesItCannotProve(t *testing.T) {
	ns := nstest.New(t) // loopback only: nothing can be proven
	r := detour(t, ns, nil, "init")
	if r.err == nil || !strings.Contains(r.stderr, "taken out again") || !strings.Contains(r.stdout, "no IPv4 address besides loopback") {
		t.Fatalf("init in a bare namespace: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	if s := saveAll(t, ns, "nft"); strings.Contains(s, "DETOUR") {
		t.Fatalf("rules left after a failed proof:\n%s", s)
	}
	mustDetour(t, ns, "init", "--verify=false")
	if s := saveAll(t, ns, "nft"); !strings.Contains(s, "DETOUR") {
		t.Fatalf("--verify=false installed nothing:\n%s", s)
	}
}

// TestInitWithTheInitContainersCapabilities: detour init with only NET_ADMIN and NET_RAW, as the
// injected detour-init runs, installs and proves the redirect; the one step that needs another
// UID says it was skipped and why, instead of failing the pod.
func TestInitWithTheInitContainersCapabilities(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatal("setpriv (util-linux) is missing")
	}
	topo := nstest.Topology(t)
	pod := addPod(t, topo, "capped")
	r := detour(t, pod.NS, func(cmd *exec.Cmd) {
		cmd.Args = append([]string{setpriv, "--bounding-set=-all,+net_admin,+net_raw", detourBin}, cmd.Args[1:]...)
		cmd.Path = setpriv
	}, "init", "-o", "json")
	if r.err != nil {
		t.Fatalf("init with NET_ADMIN and NET_RAW only: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	for _, want := range []string{`"name": "outbound",`, `"name": "own-address-to-inbound",`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("init report lacks %s:\n%s", want, r.stdout)
		}
	}
	if !regexp.MustCompile(`"name": "proxy-uid-exempt",\s*"status": "skipped",\s*"detail": "connecting as the proxy UID 2102 needs CAP_SETUID`).MatchString(r.stdout) {
		t.Errorf("the proxy-UID step should be skipped for want of CAP_SETUID:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout, `"status": "failed"`) {
		t.Errorf("a step failed:\n%s", r.stdout)
	}
}

func TestInitDryRunChangesNothing(t *testing.T) {
	topo := nstest.Topology(t)
	pod := addPod(t, topo, "pod")
	before := saveAll(t, pod.NS, "nft") + saveAll(t, pod.NS, "legacy")
	r := detour(t, pod.NS, func(c *exec.Cmd) { c.Env = append(os.Environ(), "DETOUR_SKIP_OUTBOUND_PORTS=5432") }, "init", "--dry-run")
	if r.err != nil {
		t.Fatal(r.err, r.stderr)
	}
	for _, want := range []string{"# IPv4: iptables-restore --noflush", "# IPv6: ip6tables-restore --noflush",
		"-A DETOUR_OUTBOUND -p tcp --dport 5432 -m comment --comment detour/outbound/skip-port -j RETURN"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dry run lacks %q:\n%s", want, r.stdout)
		}
	}
	if after := saveAll(t, pod.NS, "nft") + saveAll(t, pod.NS, "legacy"); after != before {
		t.Fatalf("--dry-run changed the rules:\n%s", after)
	}
}
