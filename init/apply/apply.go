package apply

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/detourmesh/detour/init/plan"
)

// Options says how to reach iptables and what to install for.
type Options struct {
	Backend string // "auto", "legacy" or "nft"
	IPv6    string // "auto", "on" or "off"
	Open    Opener // nil means OpenExec
	Log     *slog.Logger
	// Verify, when set, proves the installed rules; if it fails, Install puts the nat tables
	// back as they were and returns its error.
	Verify func(families []plan.Family) error
}

func (o Options) open() Opener {
	if o.Open != nil {
		return o.Open
	}
	return OpenExec
}

func (o Options) log() *slog.Logger {
	if o.Log != nil {
		return o.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Result describes what Install, Remove or Check did.
type Result struct {
	Backend  Backend       `json:"backend"`
	Reason   string        `json:"reason"` // why this backend
	Families []string      `json:"families"`
	Removed  []string      `json:"removed,omitempty"` // backends Remove took rules from
	Duration time.Duration `json:"duration_ns"`
	Problems []string      `json:"problems,omitempty"` // Check's findings
}

// Families resolves the --ipv6 setting for the calling thread's namespace.
func Families(ipv6 string) ([]plan.Family, error) {
	switch ipv6 {
	case "on":
		return []plan.Family{plan.IPv4, plan.IPv6}, nil
	case "off":
		return []plan.Family{plan.IPv4}, nil
	case "auto", "":
		has, err := namespaceHasIPv6()
		if err != nil {
			return nil, err
		}
		if has {
			return []plan.Family{plan.IPv4, plan.IPv6}, nil
		}
		return []plan.Family{plan.IPv4}, nil
	}
	return nil, fmt.Errorf("--ipv6 %q: want auto, on or off", ipv6)
}

// namespaceHasIPv6 reports whether any interface other than lo has an IPv6 address. Such a
// namespace needs IPv6 rules: without them its IPv6 traffic would bypass the mesh silently.
func namespaceHasIPv6() (bool, error) {
	f, err := os.Open("/proc/thread-self/net/if_inet6")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // IPv6 is not in this kernel
	}
	if err != nil {
		return false, fmt.Errorf("reading the namespace's IPv6 addresses: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 6 && fields[5] != "lo" {
			return true, nil
		}
	}
	return false, sc.Err()
}

// state is every backend's snapshot of every family.
type state struct {
	families []plan.Family
	tables   map[Backend]map[plan.Family]Tables
	snaps    map[Backend]map[plan.Family]snapshot
}

func read(o Options, families []plan.Family) (*state, error) {
	st := &state{families: families, tables: map[Backend]map[plan.Family]Tables{}, snaps: map[Backend]map[plan.Family]snapshot{}}
	for _, b := range Backends {
		st.tables[b] = map[plan.Family]Tables{}
		st.snaps[b] = map[plan.Family]snapshot{}
		for _, f := range families {
			t, err := o.open()(b, f)
			if err != nil {
				return nil, err
			}
			out, err := t.Save()
			if err != nil {
				return nil, fmt.Errorf("reading %s rules: %w", f, err)
			}
			st.tables[b][f] = t
			st.snaps[b][f] = parseSave(out)
		}
	}
	return st, nil
}

func (st *state) count(b Backend) (rules int, detour bool) {
	for _, f := range st.families {
		s := st.snaps[b][f]
		rules += s.rules
		detour = detour || s.hasDetour()
	}
	return rules, detour
}

// pick chooses the backend. Rules in both backends are the classic silent failure (packets
// traverse both and a rule in the one nobody looks at wins), so they are an error, not a guess.
func (st *state) pick(want string) (Backend, string, error) {
	legacyRules, legacyDetour := st.count(Legacy)
	nftRules, nftDetour := st.count(NFT)
	if legacyDetour && nftDetour {
		return "", "", errors.New("found Detour rules in both iptables-legacy and iptables-nft: packets traverse both; " +
			"remove one set with `detour init --remove --backend legacy` (or nft)")
	}
	switch want {
	case string(Legacy), string(NFT):
		b := Backend(want)
		other, otherDetour := NFT, nftDetour
		if b == NFT {
			other, otherDetour = Legacy, legacyDetour
		}
		if otherDetour {
			return "", "", fmt.Errorf("found Detour rules already installed with iptables-%s; remove them first with `detour init --remove --backend %s`", other, other)
		}
		return b, "chosen with --backend", nil
	case "auto", "":
	default:
		return "", "", fmt.Errorf("--backend %q: want auto, legacy or nft", want)
	}
	switch {
	case legacyRules > 0 && nftRules > 0:
		return "", "", fmt.Errorf("both iptables-legacy (%d rules) and iptables-nft (%d rules) hold rules in this namespace: "+
			"packets traverse both, so choose the one your other tools use with --backend legacy or --backend nft", legacyRules, nftRules)
	case legacyRules > 0:
		return Legacy, fmt.Sprintf("iptables-legacy already holds %d rules", legacyRules), nil
	case nftRules > 0:
		return NFT, fmt.Sprintf("iptables-nft already holds %d rules", nftRules), nil
	}
	return NFT, "no backend holds rules yet; nft is the default", nil
}

// prepare validates c, resolves the families and reads every backend's rules, then picks the
// backend Install and Check act on.
func prepare(c plan.Config, o Options) ([]plan.Family, *state, Result, error) {
	if err := c.Validate(); err != nil {
		return nil, nil, Result{}, err
	}
	if err := o.requireNetAdmin(); err != nil {
		return nil, nil, Result{}, err
	}
	families, err := Families(o.IPv6)
	if err != nil {
		return nil, nil, Result{}, err
	}
	st, err := read(o, families)
	if err != nil {
		return nil, nil, Result{}, err
	}
	b, reason, err := st.pick(o.Backend)
	if err != nil {
		return nil, nil, Result{}, err
	}
	o.log().Debug("iptables backend", "backend", b, "reason", reason)
	return families, st, Result{Backend: b, Reason: reason}, nil
}

// Install puts the plan of c in place for every family in one transaction per family. When a
// later family or the verification fails, the families already done are put back as they were.
func Install(c plan.Config, o Options) (Result, error) {
	start := time.Now()
	families, st, res, err := prepare(c, o)
	if err != nil {
		return Result{}, err
	}
	b := res.Backend
	var done []plan.Family
	for _, f := range families {
		t, snap := st.tables[b][f], st.snaps[b][f]
		if err := t.Restore(plan.Build(c, f).Install(snap.jumps)); err != nil {
			err = fmt.Errorf("installing %s rules with iptables-%s: %w%s", f, b, err, hint(err))
			return res, errors.Join(err, st.rollback(b, done))
		}
		done = append(done, f)
		res.Families = append(res.Families, f.String())
	}
	if o.Verify != nil {
		if err := o.Verify(families); err != nil {
			return res, errors.Join(fmt.Errorf("the installed rules do not redirect as they should, so they were taken out again: %w", err),
				st.rollback(b, done))
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

// rollback puts the nat table of each family back as it was read.
func (st *state) rollback(b Backend, families []plan.Family) error {
	var errs []error
	for _, f := range families {
		table := st.snaps[b][f].nat
		if table == "" {
			table = emptyNAT
		}
		if err := st.tables[b][f].Replace(table); err != nil {
			errs = append(errs, fmt.Errorf("putting the %s nat table back: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

// emptyNAT is the nat table of a namespace that had none.
const emptyNAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"

// hint says what to do about an iptables-restore failure, where its message allows a guess.
func hint(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "REDIRECT") || strings.Contains(msg, "Couldn't load target") ||
		strings.Contains(msg, "No chain/target/match"):
		return " (the kernel lacks the REDIRECT target: load xt_REDIRECT, or nft_redir for nft)"
	case strings.Contains(msg, "Table does not exist") || strings.Contains(msg, "can't initialize"):
		return " (the kernel lacks the nat table: load iptable_nat / ip6table_nat, or nft_chain_nat for nft)"
	case strings.Contains(msg, "Permission denied") || strings.Contains(msg, "Operation not permitted"):
		return " (init needs CAP_NET_ADMIN in the pod's network namespace)"
	}
	return ""
}

// requireNetAdmin fails early and clearly without CAP_NET_ADMIN, instead of leaving the user
// with iptables' own "Permission denied (you must be root)".
func (o Options) requireNetAdmin() error {
	if o.Open != nil {
		return nil // not the real iptables
	}
	const capNetAdmin = 12
	data, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		return nil // cannot tell; iptables will say
	}
	for line := range strings.Lines(string(data)) {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err == nil && caps&(1<<capNetAdmin) == 0 {
			return errors.New("detour init needs CAP_NET_ADMIN in the pod's network namespace: run it as root, " +
				"or give the init container the NET_ADMIN and NET_RAW capabilities")
		}
	}
	return nil
}

// Remove takes out every jump and chain of Detour's, and nothing else, from the chosen backend
// or, with "auto", from every backend that holds them.
func Remove(o Options) (Result, error) {
	start := time.Now()
	if err := o.requireNetAdmin(); err != nil {
		return Result{}, err
	}
	ipv6 := o.IPv6
	if ipv6 == "auto" || ipv6 == "" {
		ipv6 = "on" // rules may have been installed while the namespace had IPv6
	}
	families, err := Families(ipv6)
	if err != nil {
		return Result{}, err
	}
	st, err := read(o, families)
	if err != nil {
		return Result{}, err
	}
	backends := Backends
	switch o.Backend {
	case "auto", "":
	case string(Legacy), string(NFT):
		backends = []Backend{Backend(o.Backend)}
	default:
		return Result{}, fmt.Errorf("--backend %q: want auto, legacy or nft", o.Backend)
	}
	var res Result
	for _, b := range backends {
		for _, f := range families {
			snap := st.snaps[b][f]
			input := plan.Remove(snap.jumps, snap.chains)
			if input == "" {
				continue
			}
			if err := st.tables[b][f].Restore(input); err != nil {
				return res, fmt.Errorf("removing %s rules from iptables-%s: %w", f, b, err)
			}
			res.Removed = append(res.Removed, fmt.Sprintf("%s/%s", b, f))
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

// Check reports how the rules in place differ from the plan of c, without changing anything,
// then runs o.Verify on them. It returns an error when there is any problem.
func Check(c plan.Config, o Options) (Result, error) {
	start := time.Now()
	families, st, res, err := prepare(c, o)
	if err != nil {
		return Result{}, err
	}
	b := res.Backend
	for _, f := range families {
		res.Families = append(res.Families, f.String())
		probs, err := checkFamily(st.tables[b][f], st.snaps[b][f], plan.Build(c, f))
		if err != nil {
			return res, fmt.Errorf("checking %s rules: %w", f, err)
		}
		res.Problems = append(res.Problems, probs...)
	}
	if len(res.Problems) == 0 && o.Verify != nil {
		if err := o.Verify(families); err != nil {
			res.Problems = append(res.Problems, err.Error())
		}
	}
	res.Duration = time.Since(start)
	if len(res.Problems) > 0 {
		return res, fmt.Errorf("the redirect rules are not as they should be (%s, iptables-%s):\n  %s",
			strings.Join(res.Families, " and "), b, strings.Join(res.Problems, "\n  "))
	}
	return res, nil
}

func checkFamily(t Tables, snap snapshot, p plan.Plan) ([]string, error) {
	if !snap.hasDetour() {
		return []string{fmt.Sprintf("%s: no Detour rules are installed (run detour init)", p.Family)}, nil
	}
	var probs []string
	jumps := map[string]int{}
	for _, j := range snap.jumps {
		jumps[strings.Fields(j)[1]]++
	}
	for _, j := range p.Jumps {
		if n := jumps[j.Chain]; n > 1 {
			probs = append(probs, fmt.Sprintf("%s: %d jumps from %s into Detour's chain, want one", p.Family, n, j.Chain))
		}
	}
	want := map[string]int{}
	for _, r := range append(p.Jumps, p.Rules...) {
		want[r.Chain]++
		ok, err := t.Exists(plan.Table, r.Chain, r.Spec()...)
		if err != nil && !strings.Contains(err.Error(), "No chain") && !strings.Contains(err.Error(), "does not exist") {
			return nil, err
		}
		if !ok {
			probs = append(probs, fmt.Sprintf("%s: missing in %s: %s", p.Family, r.Chain, strings.Join(r.Spec(), " ")))
		}
	}
	for _, chain := range plan.Chains() {
		lines, err := t.List(plan.Table, chain)
		if err != nil {
			continue // a missing chain already shows as missing rules
		}
		got := 0
		for _, l := range lines {
			if strings.HasPrefix(l, "-A ") {
				got++
			}
		}
		if got != want[chain] {
			probs = append(probs, fmt.Sprintf("%s: %s holds %d rules, want %d", p.Family, chain, got, want[chain]))
		}
	}
	return probs, nil
}
