package apply

import (
	"math/rand/v2"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/detourmesh/detour/init/plan"
	"github.com/detourmesh/detour/init/verify"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// podNS is a pod namespace with IPv4 and IPv6 addresses and default routes, as a pod has.
func podNS(t testing.TB) *netns.NS {
	topo := nstest.Topology(t)
	pod, err := topo.AddPod("pod")
	if err != nil {
		t.Fatal(err)
	}
	return pod.NS
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// dump is the canonical text of every backend's nat table in ns: no dates, no counters.
func dump(t testing.TB, ns *netns.NS) string {
	t.Helper()
	var b strings.Builder
	for _, bin := range []string{"iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"} {
		cmd := exec.Command(bin, "-t", "nat")
		var out strings.Builder
		cmd.Stdout = &out
		if err := ns.Run(cmd); err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		b.WriteString("## " + bin + "\n")
		for line := range strings.Lines(out.String()) {
			if !strings.HasPrefix(line, "#") {
				b.WriteString(counters.ReplaceAllString(line, "[0:0]"))
			}
		}
	}
	return b.String()
}

// runIn runs an iptables command inside ns.
func runIn(t testing.TB, ns *netns.NS, bin string, args ...string) {
	t.Helper()
	if err := ns.Run(exec.Command(bin, args...)); err != nil {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
}

// TestRealIPTablesStates walks install, reinstall, tamper, check and remove in random order on
// real iptables and compares every state with the one canonical dump it must equal
// (the way Tailscale tests its router).
func TestRealIPTablesStates(t *testing.T) {
	for _, backend := range Backends {
		t.Run(string(backend), func(t *testing.T) {
			ns := podNS(t)
			bin := map[plan.Family]string{plan.IPv4: "iptables-" + string(backend), plan.IPv6: "ip6tables-" + string(backend)}
			// Unrelated rules a user or CNI had before; they must survive everything.
			runIn(t, ns, bin[plan.IPv4], "-t", "nat", "-A", "OUTPUT", "-d", "198.18.77.0/24", "-j", "RETURN")
			runIn(t, ns, bin[plan.IPv6], "-t", "nat", "-N", "USER_CHAIN")
			runIn(t, ns, bin[plan.IPv6], "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9", "-j", "USER_CHAIN")
			opts := Options{Backend: string(backend), IPv6: "auto"}
			c := plan.DefaultConfig()
			var pristine, installed string
			do := func(name string, fn func() error) {
				t.Helper()
				if err := ns.Do(fn); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}
			pristine = dump(t, ns)
			do("install", func() error { _, err := Install(c, opts); return err })
			installed = dump(t, ns)
			if installed == pristine || !strings.Contains(installed, "detour/outbound/redirect") {
				t.Fatalf("install changed nothing:\n%s", installed)
			}
			states := map[string]func(t *testing.T) string{
				"install": func(t *testing.T) string {
					do("install", func() error { _, err := Install(c, opts); return err })
					return installed
				},
				"remove": func(t *testing.T) string {
					do("remove", func() error { _, err := Remove(opts); return err })
					return pristine
				},
				"tamper-then-check-then-install": func(t *testing.T) string {
					do("install", func() error { _, err := Install(c, opts); return err })
					runIn(t, ns, bin[plan.IPv6], "-t", "nat", "-D", plan.ChainOutbound, "1")
					err := ns.Do(func() error { _, err := Check(c, opts); return err })
					if err == nil || !strings.Contains(err.Error(), "IPv6: missing in DETOUR_OUTBOUND") {
						t.Fatalf("check after deleting a rule by hand: %v", err)
					}
					do("install", func() error { _, err := Install(c, opts); return err })
					return installed
				},
				"check-with-proof": func(t *testing.T) string {
					do("install", func() error { _, err := Install(c, opts); return err })
					do("check", func() error {
						_, err := Check(c, Options{Backend: opts.Backend, IPv6: opts.IPv6, Verify: func(f []plan.Family) error {
							return verify.Prove(c, f).Err()
						}})
						return err
					})
					return installed
				},
			}
			names := []string{"install", "remove", "tamper-then-check-then-install", "check-with-proof"}
			r := rand.New(rand.NewPCG(1, uint64(len(backend))))
			for i := range 12 {
				name := names[r.IntN(len(names))]
				want := states[name](t)
				if got := dump(t, ns); got != want {
					t.Fatalf("step %d (%s): rules are\n%s\nwant\n%s", i, name, got, want)
				}
			}
		})
	}
}

// BenchmarkInstall measures the default install of both families with the proof on, as
// `detour init` runs it in a pod.
func BenchmarkInstall(b *testing.B) {
	ns := podNS(b)
	c := plan.DefaultConfig()
	for _, bench := range []struct {
		name  string
		proof bool
	}{{"nft", false}, {"nft+proof", true}, {"legacy", false}, {"legacy+proof", true}} {
		b.Run(bench.name, func(b *testing.B) {
			backend := strings.TrimSuffix(bench.name, "+proof")
			opts := Options{Backend: backend, IPv6: "on"}
			if bench.proof {
				opts.Verify = func(f []plan.Family) error { return verify.Prove(c, f).Err() }
			}
			err := ns.Do(func() error {
				for b.Loop() {
					if _, err := Install(c, opts); err != nil {
						return err
					}
				}
				_, err := Remove(Options{Backend: backend, IPv6: "on"})
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
