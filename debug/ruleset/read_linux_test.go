package ruleset

import (
	"net/netip"
	"os/exec"
	"slices"
	"testing"

	"github.com/detourmesh/detour/init/apply"
	"github.com/detourmesh/detour/init/plan"
	"github.com/detourmesh/detour/netns/nstest"
)

// TestReadRealRules installs Detour's rules with each backend in a pod namespace, as init does,
// reads them back with Read and finds them as planned; then a foreign rule added by hand ahead
// of Detour's jump is found and named.
func TestReadRealRules(t *testing.T) {
	for _, backend := range apply.Backends {
		t.Run(string(backend), func(t *testing.T) {
			topo := nstest.Topology(t)
			pod, err := topo.AddPod("pod")
			if err != nil {
				t.Fatal(err)
			}
			c := plan.DefaultConfig()
			c.SkipInboundPorts = []plan.PortRange{{First: 22, Last: 22}, {First: 9000, Last: 9100}}
			c.SkipOutboundCIDRs = []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("fd00:1::/64")}
			if err := pod.NS.Do(func() error {
				_, err := apply.Install(c, apply.Options{Backend: string(backend), IPv6: "auto"})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			snap, err := Read(pod.NS)
			if err != nil {
				t.Fatal(err)
			}
			if !snap.IPv6 {
				t.Fatal("the pod has IPv6, Read says it has not")
			}
			rep := Analyze(snap, plan.DefaultConfig(), &Ports{Inbound: 7143, Outbound: 7140, Admin: 7190})
			if len(rep.Findings) != 0 || rep.Backend != string(backend) || !slices.Equal(rep.Families, []string{"IPv4", "IPv6"}) {
				t.Fatalf("freshly installed rules: backend %q, families %v, findings %+v", rep.Backend, rep.Families, rep.Findings)
			}
			if rep.Flags != "--skip-inbound-ports 22,9000-9100 --skip-outbound-cidrs 10.0.0.0/8,fd00:1::/64" {
				t.Errorf("flags read back: %q", rep.Flags)
			}

			bin := "ip6tables-" + string(backend)
			if err := pod.NS.Run(exec.Command(bin, "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "--dport", "80", "-j", "ACCEPT")); err != nil {
				t.Fatal(err)
			}
			if snap, err = Read(pod.NS); err != nil {
				t.Fatal(err)
			}
			rep = Analyze(snap, plan.DefaultConfig(), nil)
			if got := kinds(rep); !slices.Equal(got, []string{"IPv6 foreign-ahead"}) || !slices.Equal(rep.Findings[0].Ports, []uint16{80}) {
				t.Fatalf("after a foreign rule: %q %+v", got, rep.Findings)
			}
		})
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
