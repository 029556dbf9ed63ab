package plan

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func mustPorts(t *testing.T, s string) []PortRange {
	t.Helper()
	r, err := ParsePorts(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustCIDRs(t *testing.T, s string) []netip.Prefix {
	t.Helper()
	r, err := ParseCIDRs(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDryRunGolden(t *testing.T) {
	tests := []struct {
		name   string
		config func(*Config)
	}{
		{"defaults", func(*Config) {}},
		{"custom-ports-and-uid", func(c *Config) {
			c.InboundPort, c.OutboundPort, c.AdminPort, c.ProxyUID = 15006, 15001, 15020, 1337
		}},
		{"skip-inbound-ports", func(c *Config) { c.SkipInboundPorts = mustPorts(t, "22,9000-9100") }},
		{"skip-outbound-ports-beyond-one-multiport", func(c *Config) {
			c.SkipOutboundPorts = mustPorts(t, "1,2,3,4,5,6,7,8,9,10,11,12,13,20-29,30,31")
		}},
		{"skip-outbound-cidrs-of-both-families", func(c *Config) {
			c.SkipOutboundCIDRs = mustCIDRs(t, "10.0.0.0/8, fd00:1::/64, 198.18.7.7")
		}},
		{"single-skipped-port", func(c *Config) { c.SkipOutboundPorts = mustPorts(t, "3306") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.config(&c)
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			got := DryRun(c, []Family{IPv4, IPv6})
			path := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("dry run differs from %s (go test -update refreshes it):\n%s", path, got)
			}
		})
	}
}

func TestEveryRuleIsCommentedAndQuoteFree(t *testing.T) {
	c := DefaultConfig()
	c.SkipInboundPorts = mustPorts(t, "22")
	c.SkipOutboundPorts = mustPorts(t, "443")
	c.SkipOutboundCIDRs = mustCIDRs(t, "10.0.0.0/8,fd00::/8")
	for _, f := range []Family{IPv4, IPv6} {
		p := Build(c, f)
		for _, r := range append(p.Jumps, p.Rules...) {
			line := r.Line("-A")
			if !strings.Contains(line, "--comment "+CommentPrefix) {
				t.Errorf("%s rule without a detour comment: %s", f, line)
			}
			if strings.ContainsAny(r.Purpose, " \"'") {
				t.Errorf("%s rule comment needs quoting: %q", f, r.Purpose)
			}
		}
	}
}

func TestCIDRsGoToTheirOwnFamily(t *testing.T) {
	c := DefaultConfig()
	c.SkipOutboundCIDRs = mustCIDRs(t, "10.0.0.0/8,fd00::/8")
	v4 := DryRun(c, []Family{IPv4})
	v6 := DryRun(c, []Family{IPv6})
	// Only the rules count: the record's comment names the CIDRs of both families.
	if !strings.Contains(v4, "-d 10.0.0.0/8") || strings.Contains(v4, "-d fd00::/8") {
		t.Errorf("IPv4 plan has the wrong CIDRs:\n%s", v4)
	}
	if !strings.Contains(v6, "-d fd00::/8") || strings.Contains(v6, "-d 10.0.0.0/8") {
		t.Errorf("IPv6 plan has the wrong CIDRs:\n%s", v6)
	}
}

func TestInstallDeletesStaleJumpsBeforeAddingNewOnes(t *testing.T) {
	stale := []string{`-A OUTPUT -p tcp -m comment --comment "old jump" -j DETOUR_OUTBOUND`}
	got := Build(DefaultConfig(), IPv4).Install(stale)
	del := strings.Index(got, `-D OUTPUT -p tcp -m comment --comment "old jump" -j DETOUR_OUTBOUND`)
	add := strings.Index(got, "-A OUTPUT")
	if del < 0 || add < 0 || del > add {
		t.Fatalf("want the stale jump deleted before the new one is added:\n%s", got)
	}
}

func TestRemoveDeletesOnlyWhatItIsGiven(t *testing.T) {
	if got := Remove(nil, nil); got != "" {
		t.Errorf("nothing to remove gave %q", got)
	}
	got := Remove([]string{"-A PREROUTING -p tcp -j DETOUR_INBOUND"}, []string{ChainInbound})
	want := "*nat\n-D PREROUTING -p tcp -j DETOUR_INBOUND\n-F DETOUR_INBOUND\n-X DETOUR_INBOUND\nCOMMIT\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestIsJump(t *testing.T) {
	tests := []struct {
		line string
		want bool
	}{
		{"-A OUTPUT -p tcp -m comment --comment detour/outbound -j DETOUR_OUTBOUND", true},
		{"-A PREROUTING -j DETOUR_INBOUND", true},
		{"-A PREROUTING -g DETOUR_INBOUND", true},
		{"-A DETOUR_OUTBOUND -o lo -j DETOUR_INBOUND", false},
		{"-A OUTPUT -j KUBE-SERVICES", false},
		{"-A OUTPUT -m comment --comment DETOUR_INBOUND -j ACCEPT", false},
		{"-N DETOUR_INBOUND", false},
		{"-P OUTPUT ACCEPT", false},
	}
	for _, tt := range tests {
		if got := IsJump(tt.line); got != tt.want {
			t.Errorf("IsJump(%q) = %v, want %v", tt.line, got, tt.want)
		}
	}
}
