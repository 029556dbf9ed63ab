package ruleset

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/detourmesh/detour/init/plan"
)

func TestSplitIsIptablesRestoresTokenizer(t *testing.T) {
	for _, tt := range []struct {
		line string
		want []string
		err  bool
	}{
		{`-A OUTPUT -p tcp -j RETURN`, []string{"-A", "OUTPUT", "-p", "tcp", "-j", "RETURN"}, false},
		{`-A X -m comment --comment "two words" -j RETURN`, []string{"-A", "X", "-m", "comment", "--comment", "two words", "-j", "RETURN"}, false},
		{`-A X --comment "a \"quote\" and a \\"`, []string{"-A", "X", "--comment", `a "quote" and a \`}, false},
		{`-A X --comment ""`, []string{"-A", "X", "--comment", ""}, false},
		{`-A X --comment "open`, nil, true},
	} {
		got, err := Split(tt.line)
		if (err != nil) != tt.err || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Split(%q) = %q, %v; want %q", tt.line, got, err, tt.want)
		}
	}
}

func TestParseRefusesWhatIsNotIptablesSave(t *testing.T) {
	for name, text := range map[string]string{
		"a rule outside a table":  "-A OUTPUT -j RETURN\n",
		"no COMMIT":               "*nat\n:OUTPUT ACCEPT [0:0]\n",
		"a table inside a table":  "*nat\n*raw\nCOMMIT\n",
		"not iptables-save":       "*nat\nhello\nCOMMIT\n",
		"an unterminated comment": "*nat\n-A OUTPUT -m comment --comment \"x\nCOMMIT\n",
	} {
		if _, err := Parse(text); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// TestPlannedRulesReadAsIptablesSaveWritesThem: a rule's key from the plan equals the key of
// the same rule read back, though iptables-save adds "-m tcp" and quotes comments.
func TestPlannedRulesReadAsIptablesSaveWritesThem(t *testing.T) {
	s := load(t, "healthy")
	c := plan.DefaultConfig()
	c.SkipOutboundPorts = []plan.PortRange{{First: 5432, Last: 5432}}
	for _, f := range []plan.Family{plan.IPv4, plan.IPv6} {
		p := plan.Build(c, f)
		for _, r := range append(p.Jumps, p.Rules...) {
			found := false
			for _, got := range s.Saves["nft"][f].Tables["nat"].Chains[r.Chain].Rules {
				found = found || got.Key() == keyOf(r)
			}
			if !found {
				t.Errorf("%s: %s not found in the saved rules by its key %q", f, r.Line("-A"), keyOf(r))
			}
		}
	}
}

// load reads testdata/<name>.<backend>.<family>.save, saved from real iptables in a namespace
// after `detour init --ipv6 on --skip-outbound-ports 5432` and the changes the name says.
func load(t *testing.T, name string) Snapshot {
	t.Helper()
	snap := Snapshot{Saves: map[string]map[plan.Family]*Save{}, IPv6: true}
	for _, b := range Backends {
		snap.Saves[b] = map[plan.Family]*Save{}
		for f, fam := range map[string]plan.Family{"ipv4": plan.IPv4, "ipv6": plan.IPv6} {
			data, err := os.ReadFile(filepath.Join("testdata", name+"."+b+"."+f+".save"))
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			s, err := Parse(string(data))
			if err != nil {
				t.Fatalf("%s %s %s: %v", name, b, f, err)
			}
			snap.Saves[b][fam] = s
		}
	}
	return snap
}

func kinds(r Report) []string {
	var k []string
	for _, f := range r.Findings {
		k = append(k, f.Family+" "+f.Kind)
	}
	return k
}

func TestAnalyze(t *testing.T) {
	proxy := &Ports{Inbound: 7143, Outbound: 7140, Admin: 7190}
	tests := []struct {
		name     string
		snap     string
		proxy    *Ports
		kinds    []string
		contains []string // in the findings' details, hints or rules
		ports    []uint16 // the ports the foreign rules name
	}{
		{name: "healthy", snap: "healthy", proxy: proxy},
		{name: "the OUTPUT jump deleted", snap: "jump-deleted", proxy: proxy, kinds: []string{"IPv4 missing"},
			contains: []string{"Detour's jump from OUTPUT is missing: the app's outbound TCP is not redirected", "run detour init again"}},
		{name: "foreign rules ahead of the jump", snap: "foreign-ahead", proxy: proxy,
			kinds: []string{"IPv4 foreign-ahead", "IPv4 foreign-ahead", "IPv4 foreign-ahead"},
			contains: []string{
				"rule 1 of OUTPUT, ahead of Detour's jump (rule 5), wins for traffic matching -p tcp --dport 80: returns it from the chain",
				"rule 2 of OUTPUT, ahead of Detour's jump (rule 5), wins for all TCP: jumps to USER_NAT, whose rule 2 sends it elsewhere (DNAT --to-destination 198.18.0.99:8443)",
				"iptables-nft -t nat -D OUTPUT 1",
				"raw OUTPUT rule 1 exempts traffic matching -p tcp --dport 6379 from connection tracking",
			},
			ports: []uint16{80, 443, 6379}},
		{name: "Detour in legacy, a DNAT in nft", snap: "other-backend", proxy: proxy, kinds: []string{"IPv4 other-backend"},
			contains: []string{"iptables-nft, which Detour does not use here, holds OUTPUT rule 1, which for traffic matching -d 198.19.0.0/16 -p tcp sends it elsewhere (DNAT --to-destination 198.18.0.50:80)",
				"runs beside Detour's iptables-legacy rules"}},
		{name: "Detour in both backends", snap: "both-backends", proxy: proxy, kinds: []string{" both-backends"},
			contains: []string{"packets traverse both", "detour init --remove --backend legacy"}},
		{name: "the proxy on other ports than the rules", snap: "healthy", proxy: &Ports{Inbound: 15006, Outbound: 7140, Admin: 7190},
			kinds: []string{" wrong-port"}, contains: []string{"the rules were made for the inbound port 7143, but the proxy's inbound port is 15006"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := Analyze(load(t, tt.snap), plan.DefaultConfig(), tt.proxy)
			if got := kinds(rep); !slices.Equal(got, tt.kinds) {
				t.Errorf("findings %q, want %q", got, tt.kinds)
			}
			var all strings.Builder
			var ports []uint16
			for _, f := range rep.Findings {
				all.WriteString(f.Detail + "\n" + f.Hint + "\n" + f.Rule + "\n")
				ports = append(ports, f.Ports...)
			}
			for _, want := range tt.contains {
				if !strings.Contains(all.String(), want) {
					t.Errorf("no finding says %q:\n%s", want, all.String())
				}
			}
			slices.Sort(ports)
			if !slices.Equal(ports, tt.ports) {
				t.Errorf("ports %v, want %v", ports, tt.ports)
			}
			if rep.FlagsSource != "record e0369c5a" || rep.Flags != "--skip-outbound-ports 5432" {
				t.Errorf("flags %q from %q, want the record's", rep.Flags, rep.FlagsSource)
			}
			if t.Failed() {
				t.Logf("%+v", rep.Findings)
			}
		})
	}
}

func TestAnalyzeWithoutRulesOrRecord(t *testing.T) {
	empty := Snapshot{Saves: map[string]map[plan.Family]*Save{}}
	rep := Analyze(empty, plan.DefaultConfig(), nil)
	if got := kinds(rep); !slices.Equal(got, []string{" no-rules"}) || !rep.Failed() {
		t.Fatalf("no rules: %q", got)
	}

	// The healthy rules without their record: compared with the fallback, which lacks the
	// skipped port, so that rule is unexpected; the missing record itself is only a note.
	snap := load(t, "healthy")
	for _, s := range snap.Saves["nft"] {
		for _, c := range s.Tables["nat"].Chains {
			c.Rules = slices.DeleteFunc(c.Rules, func(r Rule) bool { return strings.HasPrefix(r.Comment, "detour/config/") })
		}
	}
	rep = Analyze(snap, plan.DefaultConfig(), nil)
	if got := kinds(rep); !slices.Equal(got, []string{"IPv4 record", "IPv6 record", "IPv4 unexpected", "IPv6 unexpected"}) {
		t.Fatalf("without a record: %q", got)
	}
	if !rep.Findings[0].Note || rep.Findings[2].Note {
		t.Errorf("the missing record should be a note and the unexpected rule a failure: %+v", rep.Findings)
	}
}

func TestEffects(t *testing.T) {
	save := func(text string) *Save {
		s, err := Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := save("*nat\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n" +
		"-A OUTPUT -p udp -j ACCEPT\n" +
		"-A OUTPUT ! -p tcp -j ACCEPT\n" +
		"-A OUTPUT ! -p udp -j ACCEPT\n" +
		"-A OUTPUT -j A\n" +
		"-A OUTPUT -g B\n" +
		"-A OUTPUT -j MARK --set-mark 1\n" +
		"-A A -j RETURN\n" +
		"-A B -p tcp -m multiport --dports 8000:8002,9000 -j RETURN\n" +
		"COMMIT\n")
	rules := s.Chain("nat", "OUTPUT").Rules
	for i, want := range []string{"", "", "ends nat for it", "", "jumps to B, whose rule 1 returns it from the chain", ""} {
		e, ok := effect(s, rules[i], true)
		if ok != (want != "") || !strings.Contains(e.text, want) {
			t.Errorf("%s: effect %q (%v), want %q", rules[i].Line, e.text, ok, want)
		}
	}
	if e, _ := effect(s, rules[4], true); !slices.Equal(e.ports, []uint16{8000, 8001, 8002, 9000}) {
		t.Errorf("ports %v", e.ports)
	}
}

// FuzzParse: rules are read from a namespace anyone with NET_ADMIN in it can write.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"healthy", "foreign-ahead"} {
		data, err := os.ReadFile(filepath.Join("testdata", name+".nft.ipv4.save"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(data))
	}
	f.Add("*nat\n-A OUTPUT -j A\n:A - [0:0]\n-A A -j OUTPUT\nCOMMIT\n") // a loop of jumps
	f.Add("*nat\n-A OUTPUT -m comment --comment \"\\\"\" -j\nCOMMIT\n")
	f.Fuzz(func(t *testing.T, text string) {
		s, err := Parse(text)
		if err != nil {
			return
		}
		snap := Snapshot{Saves: map[string]map[plan.Family]*Save{"nft": {plan.IPv4: s}, "legacy": {plan.IPv4: s}}}
		Analyze(snap, plan.DefaultConfig(), &Ports{Inbound: 1, Outbound: 2, Admin: 3})
		snap.Saves["legacy"] = nil
		Analyze(snap, plan.DefaultConfig(), nil)
	})
}
