package plan

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// comments returns the comments of every rule of p, as iptables-save shows them.
func comments(p Plan) []string {
	var out []string
	for _, r := range append(p.Jumps, p.Rules...) {
		out = append(out, CommentPrefix+r.Purpose)
	}
	return out
}

func TestTheRecordRoundTripsEveryConfiguration(t *testing.T) {
	manyCIDRs := make([]string, 40)
	for i := range manyCIDRs {
		manyCIDRs[i] = fmt.Sprintf("fd00:%x:1234:5678::/64", i+1)
	}
	tests := []struct {
		name   string
		config func(*Config)
		rules  int // record rules
	}{
		{"defaults", func(*Config) {}, 1},
		{"every list", func(c *Config) {
			c.InboundPort, c.OutboundPort, c.AdminPort, c.ProxyUID = 15006, 15001, 15020, 1337
			c.SkipInboundPorts = mustPorts(t, "22,9000-9100")
			c.SkipOutboundPorts = mustPorts(t, "5432")
			c.SkipOutboundCIDRs = mustCIDRs(t, "10.0.0.0/8,fd00::/8,198.18.7.7")
			c.PodName, c.PodNamespace = "stockweb-5d8f9c-x2x7q", "stocks"
		}, 1},
		{"more than one comment holds", func(c *Config) { c.SkipOutboundCIDRs = mustCIDRs(t, strings.Join(manyCIDRs, ",")) }, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.config(&c)
			p := Build(c, IPv6)
			n := 0
			for _, r := range p.Rules {
				if strings.HasPrefix(r.Purpose, recordPurpose) {
					n++
					if len(CommentPrefix+r.Purpose) > 255 {
						t.Errorf("a record comment of %d bytes: iptables keeps 255", len(CommentPrefix+r.Purpose))
					}
					if len(r.Target) != 0 || len(r.Match) != 0 {
						t.Errorf("a record rule that matches or acts: %s", r.Line("-A"))
					}
				}
			}
			if n != tt.rules {
				t.Errorf("%d record rules, want %d", n, tt.rules)
			}
			last := p.Rules[len(p.Rules)-1]
			if last.Chain != ChainOutbound || !strings.HasPrefix(last.Purpose, recordPurpose) {
				t.Errorf("the record is not at the end of %s: %s", ChainOutbound, last.Line("-A"))
			}
			// iptables-save lists rules in order, but a reader must not depend on it.
			cms := comments(p)
			for i, j := 0, len(cms)-1; i < j; i, j = i+1, j-1 {
				cms[i], cms[j] = cms[j], cms[i]
			}
			rec, err := ReadRecord(cms)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(rec.Config, c) {
				t.Fatalf("read back %+v, want %+v", rec.Config, c)
			}
		})
	}
}

func TestABrokenRecordIsAnErrorThatSaysWhy(t *testing.T) {
	c := DefaultConfig()
	c.SkipOutboundCIDRs = mustCIDRs(t, "10.0.0.0/8")
	good := comments(Build(c, IPv4))
	record := good[len(good)-1]
	other := DefaultConfig()
	other.InboundPort = 15006
	otherRecord := comments(Build(other, IPv4))
	long := DefaultConfig()
	for i := range 40 {
		long.SkipOutboundCIDRs = append(long.SkipOutboundCIDRs, mustCIDRs(t, fmt.Sprintf("fd00:%x::/32", i+1))...)
	}
	longRecord := comments(Build(long, IPv4))
	tests := []struct {
		name     string
		comments []string
		want     string
	}{
		{"none", []string{"detour/outbound/redirect", "kube-proxy"}, "no detour/config record"},
		{"edited by hand", []string{strings.Replace(record, "in=7143", "in=7144", 1)}, "checksum does not match"},
		{"two init runs mixed", []string{record, otherRecord[len(otherRecord)-1]}, "rules of several init runs are mixed"},
		{"a chunk lost", slicesWithout(longRecord, len(longRecord)-2), "chunks present"},
		{"a chunk twice", append([]string{longRecord[len(longRecord)-1]}, longRecord...), "chunks disagree or repeat"},
		{"no chunk numbers", []string{"detour/config/x:v1"}, "want detour/config/<i>/<n>/<sum>:<text>"},
		{"chunk beyond its count", []string{"detour/config/2/1/00000000:v1"}, "bad chunk numbers"},
		{"an unknown version", []string{recordComment("v9;in=1")}, `record version "v9"`},
		{"an unknown field", []string{recordComment("v1;in=7143;out=7140;admin=7190;uid=2102;mtu=1500")}, `"mtu" unknown`},
		{"a missing field", []string{recordComment("v1;in=7143;out=7140;admin=7190")}, "uid missing"},
		{"an invalid configuration", []string{recordComment("v1;in=7143;out=7143;admin=7190;uid=2102")}, "they must differ"},
		{"a pod name that needs quoting", []string{recordComment("v1;in=7143;out=7140;admin=7190;uid=2102;pod=a b")}, "want a Kubernetes name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadRecord(tt.comments)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ReadRecord = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// recordComment makes a well-formed one-chunk record of text, whatever text says.
func recordComment(text string) string {
	return fmt.Sprintf("%s%s1/1/%s:%s", CommentPrefix, recordPurpose, recordSum(text), text)
}

func slicesWithout(s []string, i int) []string {
	return append(append([]string{}, s[:i]...), s[i+1:]...)
}

// FuzzReadRecord: rule comments are read from a namespace anyone with NET_ADMIN in it can write,
// so any input must give an error or a valid configuration whose record reads back the same.
func FuzzReadRecord(f *testing.F) {
	c := DefaultConfig()
	c.SkipInboundPorts = mustPortsF(f, "22,9000-9100")
	for _, s := range comments(Build(c, IPv4)) {
		f.Add(s, "")
	}
	f.Add(recordComment("v1;in=7143;out=7140;admin=7190;uid=2102;skip-cidr=10.0.0.0/8"), "detour/config/1/2/00000000:v1")
	f.Add("detour/config/1/1/zzzz:v1;in=;;", "detour/config/")
	f.Fuzz(func(t *testing.T, a, b string) {
		rec, err := ReadRecord([]string{a, b})
		if err != nil {
			return
		}
		if err := rec.Config.Validate(); err != nil {
			t.Fatalf("ReadRecord accepted an invalid configuration %+v: %v", rec.Config, err)
		}
		again, err := ReadRecord(comments(Build(rec.Config, IPv4)))
		if err != nil || !reflect.DeepEqual(again.Config, rec.Config) {
			t.Fatalf("the record of %+v reads back as %+v, %v", rec.Config, again.Config, err)
		}
	})
}

func mustPortsF(f *testing.F, s string) []PortRange {
	r, err := ParsePorts(s)
	if err != nil {
		f.Fatal(err)
	}
	return r
}
