package commands

import (
	"context"
	"fmt"
	"strings"

	"github.com/detourmesh/detour/debug/check"
	"github.com/detourmesh/detour/debug/ruleset"
	"github.com/detourmesh/detour/init/plan"
)

// RulesReport is the -o json document of `detour debug rules`.
type RulesReport struct {
	Pod string `json:"pod"`
	ruleset.Report
}

// Rules shows Detour's chains in both backends of the pod's namespace and how they differ from
// what init would install with the flags the pod was started with. It returns ErrFailed, as
// diff(1) exits 1, when they differ.
func Rules(ctx context.Context, e Env, arg string) error {
	t, err := e.target(arg)
	if err != nil {
		return err
	}
	defer t.Close()
	done := e.step("reading the rules of both iptables backends")
	snap, err := ruleset.Read(t.NS)
	done()
	if err != nil {
		return fmt.Errorf("%s: %w", t.Label(), err)
	}
	fallback := plan.DefaultConfig()
	var proxy *ruleset.Ports
	if p, ok := t.Proxy(); ok {
		fallback.InboundPort, fallback.OutboundPort, fallback.AdminPort = p.Flags.InboundPort, p.Flags.OutboundPort, p.Flags.AdminPort
		proxy = &ruleset.Ports{Inbound: p.Flags.InboundPort, Outbound: p.Flags.OutboundPort, Admin: p.Flags.AdminPort}
	}
	rep := ruleset.Analyze(snap, fallback, proxy)
	if e.JSON {
		if err := e.writeJSON(RulesReport{Pod: t.Label(), Report: rep}); err != nil {
			return err
		}
	} else {
		writeRules(e, t.Label(), rep)
	}
	if rep.Failed() {
		return ErrFailed
	}
	return nil
}

func writeRules(e Env, label string, rep ruleset.Report) {
	w := e.Out
	fmt.Fprintln(w, label)
	where := "none"
	if rep.Backend != "" {
		where = fmt.Sprintf("iptables-%s, %s", rep.Backend, strings.Join(rep.Families, " and "))
	}
	fmt.Fprintf(w, "Detour's rules: %s\n", where)
	fmt.Fprintf(w, "init's flags:   %s (%s)\n", rep.Flags, rep.FlagsSource)
	for _, v := range rep.Views {
		fmt.Fprintf(w, "\niptables-%s %s, table nat\n", v.Backend, v.Family)
		for _, c := range v.Chains {
			fmt.Fprintf(w, "  %s\n", c.Name)
			if len(c.Rules) == 0 && len(c.Missing) == 0 {
				fmt.Fprintln(w, "      (empty)")
			}
			for _, r := range c.Rules {
				mark := "detour "
				if !r.Detour {
					mark = "foreign"
				}
				fmt.Fprintf(w, "    %2d %s  %s\n", r.Index, mark, strings.TrimPrefix(r.Line, "-A "+c.Name+" "))
				if r.Effect != "" {
					fmt.Fprintf(w, "              ^ %s\n", r.Effect)
				}
			}
			for _, m := range c.Missing {
				fmt.Fprintf(w, "     - MISSING  %s\n", strings.TrimPrefix(m, "-A "+c.Name+" "))
			}
		}
	}
	fmt.Fprintln(w)
	if len(rep.Findings) == 0 {
		fmt.Fprintln(w, "no differences: the rules are what init installs with those flags")
		return
	}
	for _, f := range rep.Findings {
		status := check.Failed
		if f.Note {
			status = "note"
		}
		where := strings.TrimSpace(f.Family + " " + backendName(f.Backend))
		if where != "" {
			where += ": "
		}
		fmt.Fprintf(w, "%-6s  %s%s\n", status, where, f.Detail)
		if f.Rule != "" && !strings.Contains(f.Detail, f.Rule) {
			fmt.Fprintf(w, "        rule: %s\n", f.Rule)
		}
		if f.Hint != "" {
			fmt.Fprintf(w, "        hint: %s\n", f.Hint)
		}
	}
}

func backendName(b string) string {
	if b == "" {
		return ""
	}
	return "iptables-" + b
}
