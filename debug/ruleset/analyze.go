package ruleset

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/detourmesh/detour/init/plan"
)

// Backends are iptables' two backends, in the order init/apply reads them.
var Backends = []string{"legacy", "nft"}

// Snapshot is what a namespace's rules are: every backend's save per family (nil where the
// backend holds nothing), and whether the namespace has IPv6 (so needs IPv6 rules).
type Snapshot struct {
	Saves map[string]map[plan.Family]*Save
	IPv6  bool
}

// Ports are the proxy's listening ports, to check that the rules send traffic where it listens.
type Ports struct{ Inbound, Outbound, Admin uint16 }

// Finding kinds.
const (
	NoRules      = "no-rules"       // no Detour rules in any backend
	BothBackends = "both-backends"  // Detour's rules in legacy and nft
	OtherBackend = "other-backend"  // the backend Detour does not use holds rules that change TCP's path
	Missing      = "missing"        // a rule of the plan is not installed
	Unexpected   = "unexpected"     // a rule in Detour's chains that the plan does not have
	Order        = "order"          // Detour's chains hold the plan's rules in another order
	DuplicateJmp = "duplicate-jump" // more than one jump into a Detour chain
	ForeignAhead = "foreign-ahead"  // a rule ahead of Detour's jump that captures or bypasses traffic
	NoIPv6       = "no-ipv6-rules"  // the namespace has IPv6 but no IPv6 rules
	RecordKind   = "record"         // the record of init's flags is missing, broken or inconsistent
	WrongPort    = "wrong-port"     // the rules redirect to a port the proxy does not listen on
)

// Finding is one thing wrong (or, as a note, worth knowing) about the rules.
type Finding struct {
	Kind    string `json:"kind"`
	Note    bool   `json:"note,omitempty"` // informational: not a failure
	Family  string `json:"family,omitempty"`
	Backend string `json:"backend,omitempty"`
	Rule    string `json:"rule,omitempty"` // the rule concerned, as iptables-save shows it
	Detail  string `json:"detail"`
	Hint    string `json:"hint,omitempty"`
	// Ports are the TCP destination ports a foreign rule selects, when it names them: what a
	// proof of the redirect should try.
	Ports []uint16 `json:"ports,omitempty"`
}

// Report is what Analyze found.
type Report struct {
	Backend string `json:"backend,omitempty"` // the backend holding Detour's rules; "" none
	// Flags are init's flags the rules were compared against, and where they came from.
	Flags       string      `json:"flags"`
	FlagsSource string      `json:"flags_source"` // "record <sum>", or why it is assumed
	Config      plan.Config `json:"-"`
	recorded    bool        // the rules carry a record, so the plan's record rules are expected
	Views       []View      `json:"views"`
	Findings    []Finding   `json:"findings"`
	Families    []string    `json:"families"` // with Detour's rules in Backend
	IPv6        bool        `json:"namespace_has_ipv6"`
}

// Failed reports whether any finding is a failure.
func (r Report) Failed() bool {
	for _, f := range r.Findings {
		if !f.Note {
			return true
		}
	}
	return false
}

// View is one family's nat chains in one backend, each rule marked as Detour's or foreign,
// and the planned rules that are missing: what `detour debug rules` shows.
type View struct {
	Backend string      `json:"backend"`
	Family  string      `json:"family"`
	Chains  []ChainView `json:"chains"`
}

// ChainView is one chain of a View.
type ChainView struct {
	Table   string     `json:"table"`
	Name    string     `json:"name"`
	Rules   []RuleView `json:"rules"`
	Missing []string   `json:"missing,omitempty"` // planned rules not there, as init writes them
}

// RuleView is one rule of a ChainView.
type RuleView struct {
	Index  int    `json:"index"`
	Line   string `json:"line"`
	Detour bool   `json:"detour"`           // one of Detour's, as planned
	Effect string `json:"effect,omitempty"` // what a foreign rule does to TCP, if anything
}

// FlagsText writes c as the `detour init` flags that give it (the defaults left out).
func FlagsText(c plan.Config) string {
	d := plan.DefaultConfig()
	var f []string
	if c.InboundPort != d.InboundPort {
		f = append(f, "--inbound-port "+strconv.Itoa(int(c.InboundPort)))
	}
	if c.OutboundPort != d.OutboundPort {
		f = append(f, "--outbound-port "+strconv.Itoa(int(c.OutboundPort)))
	}
	if c.AdminPort != d.AdminPort {
		f = append(f, "--admin-port "+strconv.Itoa(int(c.AdminPort)))
	}
	if c.ProxyUID != d.ProxyUID {
		f = append(f, "--proxy-uid "+strconv.FormatUint(uint64(c.ProxyUID), 10))
	}
	// The record's text spells the lists as the flags take them.
	for _, field := range strings.Split(c.Encode(), ";") {
		key, val, _ := strings.Cut(field, "=")
		switch key {
		case "skip-in":
			f = append(f, "--skip-inbound-ports "+val)
		case "skip-out":
			f = append(f, "--skip-outbound-ports "+val)
		case "skip-cidr":
			f = append(f, "--skip-outbound-cidrs "+val)
		case "pod":
			f = append(f, "--pod-name "+val)
		case "pod-namespace":
			f = append(f, "--pod-namespace "+val)
		}
	}
	if len(f) == 0 {
		return "the defaults"
	}
	return strings.Join(f, " ")
}

// hasDetour reports whether s holds any of Detour's rules or chains.
func hasDetour(s *Save) bool {
	nat := s.Tables[plan.Table]
	if nat == nil {
		return false
	}
	for _, name := range nat.Order {
		if name == plan.ChainInbound || name == plan.ChainOutbound {
			return true
		}
		for _, r := range nat.Chains[name].Rules {
			if strings.HasPrefix(r.Comment, plan.CommentPrefix) || isDetourChain(r.Target) {
				return true
			}
		}
	}
	return false
}

func isDetourChain(c string) bool { return c == plan.ChainInbound || c == plan.ChainOutbound }

// Analyze compares the rules of snap with Detour's plan: the plan of the flags recorded in
// the rules (plan.ReadRecord), or of fallback when there is no record. proxy, when a proxy
// runs, is where it listens.
func Analyze(snap Snapshot, fallback plan.Config, proxy *Ports) Report {
	rep := Report{IPv6: snap.IPv6, Findings: []Finding{}}
	fams := []plan.Family{plan.IPv4}
	if snap.IPv6 {
		fams = append(fams, plan.IPv6)
	}
	var holders []string
	for _, b := range Backends {
		for _, f := range []plan.Family{plan.IPv4, plan.IPv6} {
			if s := snap.Saves[b][f]; s != nil && hasDetour(s) {
				holders = append(holders, b)
				break
			}
		}
	}
	switch len(holders) {
	case 0:
		rep.Findings = append(rep.Findings, Finding{Kind: NoRules,
			Detail: "no Detour rules in iptables-legacy or iptables-nft: nothing sends the pod's TCP to its proxy",
			Hint:   "run detour init in the pod's network namespace (its init container did not run, or its rules were removed)"})
	case 2:
		rep.Findings = append(rep.Findings, Finding{Kind: BothBackends,
			Detail: "Detour's rules are in both iptables-legacy and iptables-nft: packets traverse both, in an order the kernel does not define",
			Hint:   "keep one: detour init --remove --backend legacy (or nft) in the pod's network namespace; init --backend auto picks the one your other tools use"})
	}
	if len(holders) > 0 {
		rep.Backend = holders[len(holders)-1] // nft, when both: init's default
	}
	rep.Config, rep.FlagsSource = configOf(snap, rep.Backend, fallback, &rep)
	rep.Flags = FlagsText(rep.Config)
	if proxy != nil && rep.Backend != "" {
		for _, p := range []struct {
			what       string
			rules, its uint16
		}{{"inbound", rep.Config.InboundPort, proxy.Inbound}, {"outbound", rep.Config.OutboundPort, proxy.Outbound}, {"admin", rep.Config.AdminPort, proxy.Admin}} {
			if p.rules != p.its {
				rep.Findings = append(rep.Findings, Finding{Kind: WrongPort, Backend: rep.Backend,
					Detail: fmt.Sprintf("the rules were made for the %s port %d, but the proxy's %s port is %d", p.what, p.rules, p.what, p.its),
					Hint:   "run detour init with the proxy's ports, or start the proxy with the ports init was given"})
			}
		}
	}
	for _, b := range Backends {
		for _, f := range []plan.Family{plan.IPv4, plan.IPv6} {
			s := snap.Saves[b][f]
			if b == rep.Backend {
				if s == nil || !hasDetour(s) {
					if f == plan.IPv6 && snap.IPv6 {
						rep.Findings = append(rep.Findings, Finding{Kind: NoIPv6, Family: f.String(), Backend: b,
							Detail: "the namespace has IPv6 addresses but no IPv6 rules: its IPv6 TCP bypasses the mesh",
							Hint:   "run detour init again (--ipv6 auto installs IPv6 rules where the namespace has IPv6)"})
					}
					continue
				}
				rep.Families = append(rep.Families, f.String())
				rep.compare(s, b, f)
				continue
			}
			if s != nil && slices.Contains(fams, f) {
				rep.otherBackend(s, b, f, rep.Backend)
			}
		}
	}
	return rep
}

// configOf picks the configuration to compare with: the record of the backend's rules, the
// same in every family, or fallback.
func configOf(snap Snapshot, backend string, fallback plan.Config, rep *Report) (plan.Config, string) {
	if backend == "" {
		return fallback, "assumed: no Detour rules hold a record"
	}
	var found *plan.Record
	for _, f := range []plan.Family{plan.IPv4, plan.IPv6} {
		s := snap.Saves[backend][f]
		if s == nil || !hasDetour(s) {
			continue
		}
		rec, err := plan.ReadRecord(comments(s))
		switch {
		case err == plan.ErrNoRecord:
			rep.Findings = append(rep.Findings, Finding{Kind: RecordKind, Note: true, Family: f.String(), Backend: backend,
				Detail: "the rules carry no record of init's flags (an init older than the record, or rules made by hand): compared with the plan of " + FlagsText(fallback)})
		case err != nil:
			rep.Findings = append(rep.Findings, Finding{Kind: RecordKind, Family: f.String(), Backend: backend,
				Detail: "the record of init's flags is broken: " + err.Error(),
				Hint:   "run detour init again: it rewrites Detour's rules with their record"})
		case found != nil && found.Sum != rec.Sum:
			rep.Findings = append(rep.Findings, Finding{Kind: RecordKind, Family: f.String(), Backend: backend,
				Detail: fmt.Sprintf("the IPv4 and IPv6 rules were installed with different flags (records %s and %s)", found.Sum, rec.Sum),
				Hint:   "run detour init again, once, with the pod's flags"})
		case found == nil:
			found = &rec
		}
	}
	if found == nil {
		return fallback, "assumed: the defaults with the proxy's ports"
	}
	rep.recorded = true
	return found.Config, "record " + found.Sum
}

// comments returns the comments of every rule of s's nat table.
func comments(s *Save) []string {
	var out []string
	for _, c := range s.Tables[plan.Table].Chains {
		for _, r := range c.Rules {
			if r.Comment != "" {
				out = append(out, r.Comment)
			}
		}
	}
	return out
}

// compare checks one family of the backend holding Detour's rules against the plan.
func (rep *Report) compare(s *Save, backend string, f plan.Family) {
	p := plan.Build(rep.Config, f)
	if !rep.recorded {
		// Rules without a record (an older init, or by hand) are not expected to have one.
		p.Rules = slices.DeleteFunc(p.Rules, plan.Rule.IsRecord)
	}
	view := View{Backend: backend, Family: f.String()}
	finding := func(kind, rule, detail, hint string) {
		rep.Findings = append(rep.Findings, Finding{Kind: kind, Family: f.String(), Backend: backend, Rule: rule, Detail: detail, Hint: hint})
	}
	detourKeys := map[string]bool{}
	for _, r := range append(slices.Clone(p.Jumps), p.Rules...) {
		detourKeys[keyOf(r)] = true
	}
	// The jumps from the built-in chains, and what stands ahead of them there.
	for _, j := range p.Jumps {
		cv := ChainView{Table: plan.Table, Name: j.Chain}
		c := s.Chain(plan.Table, j.Chain)
		jumpAt, jumps := 0, 0
		if c != nil {
			for _, r := range c.Rules {
				if isDetourChain(r.Target) {
					jumps++
					if jumpAt == 0 && keyOf(j) == r.Key() {
						jumpAt = r.Index
					}
				}
			}
		}
		if jumpAt == 0 {
			cv.Missing = append(cv.Missing, j.Line("-A"))
			finding(Missing, j.Line("-A"), fmt.Sprintf("Detour's jump from %s is missing: %s", j.Chain, jumpMeaning(j.Chain)),
				"run detour init again in the pod's network namespace (the jump was deleted, or replaced by a rule that differs)")
		}
		if jumps > 1 {
			finding(DuplicateJmp, "", fmt.Sprintf("%d jumps from %s into Detour's chains, want one", jumps, j.Chain), "run detour init again: it keeps one")
		}
		if c != nil {
			for _, r := range c.Rules {
				rv := RuleView{Index: r.Index, Line: r.Line, Detour: detourKeys[r.Key()]}
				if !rv.Detour && (jumpAt == 0 || r.Index < jumpAt) && !isDetourChain(r.Target) {
					if eff, ok := effect(s, r, true); ok {
						rv.Effect = eff.text
						if jumpAt > 0 {
							rep.Findings = append(rep.Findings, Finding{Kind: ForeignAhead, Family: f.String(), Backend: backend, Rule: r.Line, Ports: eff.ports,
								Detail: fmt.Sprintf("rule %d of %s, ahead of Detour's jump (rule %d), wins for %s: %s", r.Index, j.Chain, jumpAt, traffic(r), eff.text),
								Hint:   fmt.Sprintf("remove it (iptables-%s -t nat -D %s %d), or, if the pod needs that traffic to bypass the mesh, say so to init with --skip-%s-ports", backend, j.Chain, r.Index, jumpSide(j.Chain))})
						}
					}
				}
				cv.Rules = append(cv.Rules, rv)
			}
		}
		view.Chains = append(view.Chains, cv)
	}
	// Detour's own chains: the plan's rules, in the plan's order, and nothing else.
	for _, chain := range plan.Chains() {
		var want []plan.Rule
		for _, r := range p.Rules {
			if r.Chain == chain {
				want = append(want, r)
			}
		}
		cv := ChainView{Table: plan.Table, Name: chain}
		c := s.Chain(plan.Table, chain)
		var got []Rule
		if c != nil {
			got = c.Rules
		}
		left := map[string]int{}
		for _, r := range got {
			left[r.Key()]++
		}
		for _, r := range want {
			if left[keyOf(r)] > 0 {
				left[keyOf(r)]--
				continue
			}
			cv.Missing = append(cv.Missing, r.Line("-A"))
			finding(Missing, r.Line("-A"), fmt.Sprintf("missing in %s: %s", chain, strings.Join(r.Spec(), " ")),
				"run detour init again in the pod's network namespace, with the flags above")
		}
		wantKeys := map[string]int{}
		for _, r := range want {
			wantKeys[keyOf(r)]++
		}
		var inPlan []string
		for _, r := range got {
			rv := RuleView{Index: r.Index, Line: r.Line}
			if wantKeys[r.Key()] > 0 {
				wantKeys[r.Key()]--
				rv.Detour = true
				inPlan = append(inPlan, r.Key())
			} else {
				if eff, ok := effect(s, r, false); ok {
					rv.Effect = eff.text
				}
				finding(Unexpected, r.Line, fmt.Sprintf("rule %d of %s is not in the plan of these flags%s", r.Index, chain, effectSuffix(rv.Effect)),
					"Detour's chains hold Detour's rules only: run detour init again (it rewrites them), and put your own rules in a chain of your own")
			}
			cv.Rules = append(cv.Rules, rv)
		}
		var planOrder []string
		for _, r := range want {
			if slices.Contains(inPlan, keyOf(r)) {
				planOrder = append(planOrder, keyOf(r))
			}
		}
		if len(cv.Missing) == 0 && !slices.Equal(inPlan, planOrder) {
			finding(Order, "", fmt.Sprintf("%s holds the plan's rules in another order, so a later rule may never be reached", chain),
				"run detour init again: it writes the chain in order")
		}
		view.Chains = append(view.Chains, cv)
	}
	rep.rawBypass(s, backend, f)
	rep.Views = append(rep.Views, view)
}

// rawBypass finds rules of the raw table that exempt TCP from connection tracking before nat
// sees it: an untracked connection is never NATed, so never redirected.
func (rep *Report) rawBypass(s *Save, backend string, f plan.Family) {
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		c := s.Chain("raw", chain)
		if c == nil {
			continue
		}
		for _, r := range c.Rules {
			if !selectsTCP(r) || !notrack(r) {
				continue
			}
			rep.Findings = append(rep.Findings, Finding{Kind: ForeignAhead, Family: f.String(), Backend: backend, Rule: r.Line, Ports: dports(r),
				Detail: fmt.Sprintf("raw %s rule %d exempts %s from connection tracking, so nat never sees it and Detour never redirects it", chain, r.Index, traffic(r)),
				Hint:   fmt.Sprintf("remove it (iptables-%s -t raw -D %s %d)", backend, chain, r.Index)})
		}
	}
}

// otherBackend reports what the backend Detour does not use holds that changes TCP's path: it
// runs beside Detour's rules, and the kernel does not say which of the two comes first.
func (rep *Report) otherBackend(s *Save, backend string, f plan.Family, detourBackend string) {
	if detourBackend == "" || hasDetour(s) {
		return // nothing to run beside, or BothBackends said it
	}
	view := View{Backend: backend, Family: f.String()}
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		c := s.Chain(plan.Table, chain)
		if c == nil {
			continue
		}
		cv := ChainView{Table: plan.Table, Name: chain}
		for _, r := range c.Rules {
			rv := RuleView{Index: r.Index, Line: r.Line}
			if eff, ok := effect(s, r, true); ok {
				rv.Effect = eff.text
				rep.Findings = append(rep.Findings, Finding{Kind: OtherBackend, Family: f.String(), Backend: backend, Rule: r.Line, Ports: eff.ports,
					Detail: fmt.Sprintf("iptables-%s, which Detour does not use here, holds %s rule %d, which for %s %s; it runs beside Detour's iptables-%s rules, in an order the kernel does not define",
						backend, chain, r.Index, traffic(r), eff.text, detourBackend),
					Hint: fmt.Sprintf("move it to iptables-%s, or remove it (iptables-%s -t nat -D %s %d)", detourBackend, backend, chain, r.Index)})
			}
			cv.Rules = append(cv.Rules, rv)
		}
		if len(cv.Rules) > 0 {
			view.Chains = append(view.Chains, cv)
		}
	}
	rep.rawBypass(s, backend, f)
	if len(view.Chains) > 0 {
		rep.Views = append(rep.Views, view)
	}
}

// keyOf is the key of a planned rule, as iptables-save would show it.
func keyOf(r plan.Rule) string { return ruleOf(r.Spec()).Key() }

func jumpMeaning(chain string) string {
	if chain == "OUTPUT" {
		return "the app's outbound TCP is not redirected to the proxy"
	}
	return "inbound TCP to the pod is not redirected to the proxy"
}

func jumpSide(chain string) string {
	if chain == "OUTPUT" {
		return "outbound"
	}
	return "inbound"
}

func effectSuffix(e string) string {
	if e == "" {
		return ""
	}
	return ": it " + e
}

// eff is what a rule does to the TCP it selects.
type eff struct {
	text  string
	ports []uint16
}

// effect says what rule r does to TCP when it is reached, if it captures or bypasses anything:
// in a built-in chain (top) RETURN ends the table's traversal for the packet, in a user chain
// it only returns to the caller. A jump into a user chain is followed (a few levels deep).
func effect(s *Save, r Rule, top bool) (eff, bool) {
	return effectDepth(s, r, top, 0)
}

func effectDepth(s *Save, r Rule, top bool, depth int) (eff, bool) {
	if !selectsTCP(r) {
		return eff{}, false
	}
	ports := dports(r)
	switch r.Target {
	case "ACCEPT":
		return eff{"ends nat for it: it is never redirected to the proxy", ports}, true
	case "RETURN":
		if top {
			return eff{"returns it from the chain: it is never redirected to the proxy", ports}, true
		}
		return eff{}, false
	case "DNAT":
		return eff{"sends it elsewhere (DNAT " + strings.Join(r.TargetArgs, " ") + ") instead of to the proxy", ports}, true
	case "REDIRECT":
		return eff{"redirects it elsewhere (REDIRECT " + strings.Join(r.TargetArgs, " ") + ") instead of to the proxy", ports}, true
	case "", "LOG", "NFLOG", "MARK", "CONNMARK", "TRACE", "AUDIT", "SNAT", "MASQUERADE":
		return eff{}, false // does not end the traversal, or does not apply before the redirect
	}
	if depth >= 8 || isDetourChain(r.Target) {
		return eff{}, false
	}
	c := s.Chain(r.Table, r.Target)
	if c == nil {
		return eff{}, false
	}
	for _, inner := range c.Rules {
		if e, ok := effectDepth(s, inner, r.Goto && top, depth+1); ok {
			if len(e.ports) == 0 {
				e.ports = ports
			}
			return eff{fmt.Sprintf("jumps to %s, whose rule %d %s", c.Name, inner.Index, e.text), e.ports}, true
		}
	}
	return eff{}, false
}

// selectsTCP reports whether r can match TCP: no protocol, or tcp, not negated.
func selectsTCP(r Rule) bool {
	for i := 0; i+1 < len(r.Match); i++ {
		if r.Match[i] == "-p" || r.Match[i] == "--protocol" {
			neg := i > 0 && r.Match[i-1] == "!"
			p := r.Match[i+1]
			isTCP := p == "tcp" || p == "6" || p == "all" || p == "0"
			if neg {
				return p != "tcp" && p != "6" && p != "all"
			}
			return isTCP
		}
	}
	return true
}

func notrack(r Rule) bool {
	return r.Target == "NOTRACK" || (r.Target == "CT" && slices.Contains(r.TargetArgs, "--notrack"))
}

// dports returns the destination ports r selects by --dport or --dports (ranges up to 16 ports
// each), when not negated.
func dports(r Rule) []uint16 {
	var out []uint16
	for i := 0; i+1 < len(r.Match); i++ {
		w := r.Match[i]
		if (w != "--dport" && w != "--dports" && w != "--destination-port" && w != "--destination-ports") || (i > 0 && r.Match[i-1] == "!") {
			continue
		}
		for _, part := range strings.Split(r.Match[i+1], ",") {
			lo, hi, isRange := strings.Cut(part, ":")
			a, err := strconv.ParseUint(lo, 10, 16)
			if err != nil || a == 0 {
				continue
			}
			b := a
			if isRange {
				if b, err = strconv.ParseUint(hi, 10, 16); err != nil || b < a {
					continue
				}
			}
			for p := a; p <= b && p < a+16; p++ {
				out = append(out, uint16(p))
			}
		}
	}
	return out
}

// traffic says which traffic r selects, in iptables' own words.
func traffic(r Rule) string {
	if len(r.Match) == 0 {
		return "all TCP"
	}
	return "traffic matching " + strings.Join(r.Match, " ")
}
