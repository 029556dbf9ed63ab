package apply

import (
	"slices"
	"strings"

	"github.com/detourmesh/detour/init/plan"
)

// snapshot is what one backend's iptables-save output says about one family.
type snapshot struct {
	rules  int      // rules in every table
	detour int      // Detour's rules, jumps and chains
	jumps  []string // jumps into Detour's chains, as iptables -S prints them
	chains []string // Detour's chains that exist
	nat    string   // the nat table as saved, to put back on rollback; "" when absent
}

func (s snapshot) hasDetour() bool { return s.detour > 0 }

func parseSave(out string) snapshot {
	var s snapshot
	var table string
	var nat strings.Builder
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":") && table == plan.Table:
			name := strings.Fields(line[1:])[0]
			if name == plan.ChainInbound || name == plan.ChainOutbound {
				s.chains = append(s.chains, name)
				s.detour++
			}
		case strings.HasPrefix(line, "-A "):
			s.rules++
			if table == plan.Table {
				if plan.IsJump(line) {
					s.jumps = append(s.jumps, line)
				}
				if strings.Contains(line, plan.CommentPrefix) || plan.IsJump(line) {
					s.detour++
				}
			}
		}
		if table == plan.Table {
			nat.WriteString(line + "\n")
		}
	}
	s.nat = nat.String()
	slices.Sort(s.chains)
	return s
}
