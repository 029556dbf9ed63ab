package plan

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Family is an IP family; each has its own iptables binary and its own plan.
type Family int

const (
	IPv4 Family = iota
	IPv6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Table is the one table Detour writes to.
const Table = "nat"

// Detour's own chains, each entered by one jump from a built-in chain.
const (
	ChainInbound  = "DETOUR_INBOUND"
	ChainOutbound = "DETOUR_OUTBOUND"
)

// CommentPrefix starts the comment of every rule Detour installs, so a reader of iptables-save
// (and the debugging CLI) can tell which rule sent a packet where.
const CommentPrefix = "detour/"

// Rule is one rule in the nat table.
type Rule struct {
	Chain   string
	Match   []string // match arguments, before the comment
	Purpose string   // becomes the comment "detour/<purpose>"; no spaces, so it never needs quoting
	Target  []string // "-j" and its arguments
}

// Spec is the rule as go-iptables and `iptables -C` take it: everything after the chain.
func (r Rule) Spec() []string {
	spec := slices.Clone(r.Match)
	spec = append(spec, "-m", "comment", "--comment", CommentPrefix+r.Purpose)
	return append(spec, r.Target...)
}

// Line is the rule as iptables-restore takes it, with the given command ("-A", "-D", ...).
func (r Rule) Line(cmd string) string {
	return cmd + " " + r.Chain + " " + strings.Join(r.Spec(), " ")
}

// Plan is the complete set of rules for one family.
type Plan struct {
	Family Family
	Jumps  []Rule // in PREROUTING and OUTPUT, one per Detour chain
	Rules  []Rule // in Detour's chains, in order
}

// Chains lists Detour's chains in the order they are declared.
func Chains() []string { return []string{ChainInbound, ChainOutbound} }

// Build derives the rules for family f from c. It assumes c is valid (Config.Validate).
func Build(c Config, f Family) Plan {
	tcp := []string{"-p", "tcp"}
	ret := []string{"-j", "RETURN"}
	loopback := "127.0.0.0/8"
	if f == IPv6 {
		loopback = "::1/128"
	}
	p := Plan{Family: f}
	p.Jumps = []Rule{
		{Chain: "PREROUTING", Match: tcp, Purpose: "inbound", Target: []string{"-j", ChainInbound}},
		{Chain: "OUTPUT", Match: tcp, Purpose: "outbound", Target: []string{"-j", ChainOutbound}},
	}

	in := func(purpose string, target []string, match ...string) {
		p.Rules = append(p.Rules, Rule{Chain: ChainInbound, Match: match, Purpose: purpose, Target: target})
	}
	in("inbound/skip-admin-port", ret, "-p", "tcp", "--dport", strconv.Itoa(int(c.AdminPort)))
	for _, m := range portMatches(c.SkipInboundPorts) {
		in("inbound/skip-port", ret, m...)
	}
	in("inbound/redirect", []string{"-j", "REDIRECT", "--to-ports", strconv.Itoa(int(c.InboundPort))}, tcp...)

	out := func(purpose string, target []string, match ...string) {
		p.Rules = append(p.Rules, Rule{Chain: ChainOutbound, Match: match, Purpose: purpose, Target: target})
	}
	// The proxy's own connections must leave as they are, or they would loop back into it.
	out("outbound/skip-proxy-uid", ret, "-m", "owner", "--uid-owner", strconv.FormatUint(uint64(c.ProxyUID), 10))
	out("outbound/skip-loopback", ret, "-d", loopback, "-o", "lo")
	// Anything else leaving through lo is for one of the pod's own addresses: the app calling
	// its own pod IP still goes through its inbound proxy, by the inbound chain's own rules.
	out("outbound/own-address-to-inbound", []string{"-j", ChainInbound}, "-o", "lo")
	out("outbound/own-address-skipped", ret, "-o", "lo")
	for _, m := range portMatches(c.SkipOutboundPorts) {
		out("outbound/skip-port", ret, m...)
	}
	for _, cidr := range c.SkipOutboundCIDRs {
		if cidr.Addr().Is4() == (f == IPv4) {
			out("outbound/skip-cidr", ret, "-d", cidr.String())
		}
	}
	out("outbound/redirect", []string{"-j", "REDIRECT", "--to-ports", strconv.Itoa(int(c.OutboundPort))}, tcp...)
	// Last, where no packet reaches them: the flags of this plan, for detour debug (record.go).
	p.Rules = append(p.Rules, recordRules(c)...)
	return p
}

// multiportSlots is how many ports one multiport match holds; a range takes two.
const multiportSlots = 15

// portMatches turns port ranges into as few match argument lists as iptables allows.
func portMatches(ranges []PortRange) [][]string {
	var out [][]string
	var cur []string
	used := 0
	flush := func() {
		if len(cur) == 0 {
			return
		}
		if len(cur) == 1 {
			out = append(out, []string{"-p", "tcp", "--dport", cur[0]})
		} else {
			out = append(out, []string{"-p", "tcp", "-m", "multiport", "--dports", strings.Join(cur, ",")})
		}
		cur, used = nil, 0
	}
	for _, r := range ranges {
		n := 1
		if r.First != r.Last {
			n = 2
		}
		if used+n > multiportSlots {
			flush()
		}
		cur = append(cur, r.String())
		used += n
	}
	flush()
	return out
}

// Install is the iptables-restore --noflush input that installs p in one transaction. Declaring
// Detour's chains empties them; stale lists the existing jumps into them (as `iptables -S`
// prints them), which are deleted first so a jump is never duplicated.
func (p Plan) Install(stale []string) string {
	var b strings.Builder
	b.WriteString("*" + Table + "\n")
	for _, c := range Chains() {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, s := range stale {
		b.WriteString(deleteLine(s) + "\n")
	}
	for _, r := range p.Jumps {
		b.WriteString(r.Line("-A") + "\n")
	}
	for _, r := range p.Rules {
		b.WriteString(r.Line("-A") + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Remove is the iptables-restore --noflush input that deletes the jumps in stale and the
// chains in chains (those of Detour's that exist), and nothing else. It is empty when there
// is nothing to remove.
func Remove(stale, chains []string) string {
	if len(stale) == 0 && len(chains) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("*" + Table + "\n")
	for _, s := range stale {
		b.WriteString(deleteLine(s) + "\n")
	}
	for _, c := range chains {
		b.WriteString("-F " + c + "\n")
	}
	for _, c := range chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// deleteLine turns a rule as `iptables -S` prints it ("-A CHAIN ...") into its deletion.
func deleteLine(s string) string {
	return "-D" + strings.TrimPrefix(s, "-A")
}

// IsJump reports whether an `iptables -S` line is a jump into one of Detour's chains from a
// chain that is not Detour's own: the lines Install and Remove treat as stale.
func IsJump(line string) bool {
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "-A" || isOwnChain(f[1]) {
		return false
	}
	for i := 2; i+1 < len(f); i++ {
		if (f[i] == "-j" || f[i] == "-g") && isOwnChain(f[i+1]) {
			return true
		}
	}
	return false
}

func isOwnChain(c string) bool { return c == ChainInbound || c == ChainOutbound }

// DryRun is what `detour init --dry-run` prints: the install input of each family, exactly as
// it would be fed to iptables-restore when no Detour rules exist yet.
func DryRun(c Config, families []Family) string {
	var b strings.Builder
	for _, f := range families {
		bin := "iptables-restore"
		if f == IPv6 {
			bin = "ip6tables-restore"
		}
		fmt.Fprintf(&b, "# %s: %s --noflush\n", f, bin)
		b.WriteString(Build(c, f).Install(nil))
	}
	return b.String()
}
