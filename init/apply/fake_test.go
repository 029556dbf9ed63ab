package apply

import (
	"fmt"
	"slices"
	"strings"

	"github.com/detourmesh/detour/init/plan"
)

// fakeTables keeps a nat table in memory and understands the subset of iptables-restore that
// apply writes, so apply's decisions can be tested without root. Behaviour on real iptables is
// tested in real namespaces (apply_linux_test.go, integration/).
type fakeTables struct {
	chains   map[string][]string // chain -> rules as "-A CHAIN ..." lines
	order    []string            // user chains in creation order
	other    int                 // rules in other tables
	failNext error               // the next Restore fails with this, changing nothing
	restores []string
}

func newFakeTables() *fakeTables {
	return &fakeTables{chains: map[string][]string{"PREROUTING": nil, "INPUT": nil, "OUTPUT": nil, "POSTROUTING": nil}}
}

var builtins = []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}

func (t *fakeTables) Exists(_, chain string, spec ...string) (bool, error) {
	rules, ok := t.chains[chain]
	if !ok {
		return false, fmt.Errorf("No chain/target/match by that name")
	}
	return slices.Contains(rules, "-A "+chain+" "+strings.Join(spec, " ")), nil
}

func (t *fakeTables) List(_, chain string) ([]string, error) {
	rules, ok := t.chains[chain]
	if !ok {
		return nil, fmt.Errorf("chain %s does not exist", chain)
	}
	return append([]string{"-N " + chain}, rules...), nil
}

func (t *fakeTables) Save() (string, error) {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range builtins {
		fmt.Fprintf(&b, ":%s ACCEPT [0:0]\n", c)
	}
	for _, c := range t.order {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range append(slices.Clone(builtins), t.order...) {
		for _, r := range t.chains[c] {
			b.WriteString(r + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	if t.other > 0 {
		b.WriteString("*filter\n")
		for i := range t.other {
			fmt.Fprintf(&b, "-A INPUT -s 198.18.9.%d/32 -j DROP\n", i)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String(), nil
}

func (t *fakeTables) Restore(input string) error { return t.apply(input, false) }
func (t *fakeTables) Replace(input string) error { return t.apply(input, true) }

func (t *fakeTables) apply(input string, replace bool) error {
	if t.failNext != nil {
		err := t.failNext
		t.failNext = nil
		return err
	}
	t.restores = append(t.restores, input)
	next := &fakeTables{chains: map[string][]string{}, order: slices.Clone(t.order), other: t.other}
	for k, v := range t.chains {
		next.chains[k] = slices.Clone(v)
	}
	if replace {
		next = newFakeTables()
		next.other = t.other
	}
	for line := range strings.Lines(input) {
		line = strings.TrimSpace(line)
		f := strings.Fields(line)
		switch {
		case line == "" || line == "*nat" || line == "COMMIT":
		case strings.HasPrefix(line, ":"):
			name := f[0][1:]
			if slices.Contains(builtins, name) {
				continue
			}
			if _, ok := next.chains[name]; !ok {
				next.order = append(next.order, name)
			}
			next.chains[name] = nil
		case f[0] == "-A":
			if _, ok := next.chains[f[1]]; !ok {
				return fmt.Errorf("line %q: no chain %s", line, f[1])
			}
			next.chains[f[1]] = append(next.chains[f[1]], line)
		case f[0] == "-D":
			want := "-A" + strings.TrimPrefix(line, "-D")
			i := slices.Index(next.chains[f[1]], want)
			if i < 0 {
				return fmt.Errorf("line %q: no such rule", line)
			}
			next.chains[f[1]] = slices.Delete(next.chains[f[1]], i, i+1)
		case f[0] == "-F":
			next.chains[f[1]] = nil
		case f[0] == "-X":
			delete(next.chains, f[1])
			next.order = slices.DeleteFunc(next.order, func(c string) bool { return c == f[1] })
		default:
			return fmt.Errorf("fake iptables-restore does not know %q", line)
		}
	}
	*t = *next
	return nil
}

// fakeHost is every backend and family of one namespace.
type fakeHost map[Backend]map[plan.Family]*fakeTables

func newFakeHost() fakeHost {
	h := fakeHost{}
	for _, b := range Backends {
		h[b] = map[plan.Family]*fakeTables{plan.IPv4: newFakeTables(), plan.IPv6: newFakeTables()}
	}
	return h
}

func (h fakeHost) open(b Backend, f plan.Family) (Tables, error) { return h[b][f], nil }

func (h fakeHost) dump() string {
	var b strings.Builder
	for _, be := range Backends {
		for _, f := range []plan.Family{plan.IPv4, plan.IPv6} {
			s, _ := h[be][f].Save()
			fmt.Fprintf(&b, "# %s %s\n%s", be, f, s)
		}
	}
	return b.String()
}
