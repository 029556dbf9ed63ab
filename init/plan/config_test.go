package plan

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParsePorts(t *testing.T) {
	tests := []struct {
		name, in string
		want     []PortRange
		err      string
	}{
		{"empty is none", "", nil, ""},
		{"single ports and ranges", "22, 8000-8100,443", []PortRange{{22, 22}, {8000, 8100}, {443, 443}}, ""},
		{"a range of one port", "80-80", []PortRange{{80, 80}}, ""},
		{"blank items are ignored", ",22,,", []PortRange{{22, 22}}, ""},
		{"port zero is refused", "0", nil, "want a port from 1 to 65535"},
		{"a port above 65535 is refused", "65536", nil, "want a port"},
		{"a reversed range is refused", "90-80", nil, "90 is above 80"},
		{"words are refused", "http", nil, `port "http"`},
		{"an open range is refused", "80-", nil, "port range"},
		{"a negative port is refused", "-1", nil, "port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePorts(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParsePorts(%q) error = %v, want one containing %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParsePorts(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseCIDRs(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
		err      string
	}{
		{"both families", "10.0.0.0/8,fd00::/8", []string{"10.0.0.0/8", "fd00::/8"}, ""},
		{"a bare address is one host", "198.18.0.5, fd00:de70::5", []string{"198.18.0.5/32", "fd00:de70::5/128"}, ""},
		{"host bits set are refused with a hint", "10.1.2.3/8", nil, "did you mean 10.0.0.0/8"},
		{"garbage is refused", "ten", nil, `CIDR "ten"`},
		{"a bad prefix length is refused", "10.0.0.0/33", nil, "CIDR"},
		{"a zone is refused", "fe80::1%eth0", nil, "zones"},
		{"v4-mapped v6 is refused", "::ffff:10.0.0.1", nil, "plain IPv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCIDRs(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseCIDRs(%q) error = %v, want one containing %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, p := range got {
				s = append(s, p.String())
			}
			if !reflect.DeepEqual(s, tt.want) {
				t.Fatalf("ParseCIDRs(%q) = %v, want %v", tt.in, s, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		err    string
	}{
		{"defaults are valid", func(*Config) {}, ""},
		{"proxy uid 0 is refused", func(c *Config) { c.ProxyUID = 0 }, "--proxy-uid 0 is refused"},
		{"equal proxy ports are refused", func(c *Config) { c.OutboundPort = c.InboundPort }, "must differ"},
		{"admin on a proxy port is refused", func(c *Config) { c.AdminPort = c.OutboundPort }, "collides"},
		{"port zero is refused", func(c *Config) { c.InboundPort = 0 }, "--inbound-port: port 0"},
		{"a Kubernetes pod name is valid", func(c *Config) { c.PodName, c.PodNamespace = "web-7d9f-x2.a", "shop" }, ""},
		{"a pod name with a space is refused", func(c *Config) { c.PodName = "web 1" }, `--pod-name "web 1"`},
		{"a namespace with a quote is refused", func(c *Config) { c.PodNamespace = `a"b` }, "--pod-namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.change(&c)
			err := c.Validate()
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.err)
			}
		})
	}
}

// FuzzParsePorts: any input either fails with an error or yields ranges that print back to
// input ParsePorts accepts again, identically.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"", "22", "80,443", "8000-8100", "0", "65535", "1-65535", "a-b", "9-1", ",,", " 22 , 23 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParsePorts(s)
		if err != nil {
			return
		}
		var parts []string
		for _, r := range got {
			if r.First == 0 || r.Last < r.First {
				t.Fatalf("ParsePorts(%q) gave invalid range %v", s, r)
			}
			parts = append(parts, strings.Replace(r.String(), ":", "-", 1))
		}
		again, err := ParsePorts(strings.Join(parts, ","))
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("round trip of %q: %v, %v; want %v", s, again, err, got)
		}
	})
}

// FuzzParseCIDRs: accepted prefixes are masked, unzoned and parse back to themselves.
func FuzzParseCIDRs(f *testing.F) {
	for _, s := range []string{"", "10.0.0.0/8", "fd00::/8", "1.2.3.4", "::1", "10.1.2.3/8", "fe80::1%lo", "::ffff:1.2.3.4/128", "0.0.0.0/0,::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseCIDRs(s)
		if err != nil {
			return
		}
		for _, p := range got {
			if p != p.Masked() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
				t.Fatalf("ParseCIDRs(%q) accepted %v", s, p)
			}
			again, err := netip.ParsePrefix(p.String())
			if err != nil || again != p {
				t.Fatalf("ParseCIDRs(%q): %v does not parse back: %v", s, p, err)
			}
		}
	})
}
