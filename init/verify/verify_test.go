package verify

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/detourmesh/detour/init/plan"
)

func TestTestDestinationAvoidsWhatIsSkipped(t *testing.T) {
	tests := []struct {
		name   string
		change func(*plan.Config)
		family plan.Family
		want   string
		err    string
	}{
		{"the first candidate by default", func(*plan.Config) {}, plan.IPv4, "198.18.255.254:9", ""},
		{"IPv6 has its own", func(*plan.Config) {}, plan.IPv6, "[fd00:de70:ffff::fffe]:9", ""},
		{"a skipped port moves the port", func(c *plan.Config) { c.SkipOutboundPorts = []plan.PortRange{{First: 1, Last: 100}} }, plan.IPv4, "198.18.255.254:101", ""},
		{"a skipped CIDR moves the address", func(c *plan.Config) {
			c.SkipOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}
		}, plan.IPv4, "198.19.255.254:9", ""},
		{"everything skipped is an error", func(c *plan.Config) {
			c.SkipOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
		}, plan.IPv4, "", "nothing left to prove"},
		{"the proxy ports are never the test port", func(c *plan.Config) {
			c.SkipOutboundPorts = []plan.PortRange{{First: 1, Last: 7139}}
		}, plan.IPv4, "198.18.255.254:7141", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := plan.DefaultConfig()
			tt.change(&c)
			got, err := testDestination(c, tt.family)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("testDestination = %v, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestReportErrNamesOnlyFailedSteps(t *testing.T) {
	r := Report{Steps: []Step{
		{Family: "IPv4", Name: "outbound", Status: OK, Detail: "fine"},
		{Family: "IPv4", Name: "admin-port-exempt", Status: Skipped, Detail: "port busy"},
		{Family: "IPv6", Name: "proxy-uid-exempt", Status: Failed, Detail: "landed on the inbound port"},
	}}
	err := r.Err()
	if err == nil || err.Error() != "IPv6 proxy-uid-exempt: landed on the inbound port" {
		t.Fatalf("Err() = %v", err)
	}
	if (Report{Steps: r.Steps[:2]}).Err() != nil {
		t.Fatal("ok and skipped steps are not failures")
	}
}
