// Package ruleset reads a network namespace's iptables rules as iptables-save prints them and
// explains them against Detour's plan: which of Detour's rules are missing or changed, which
// rules of others win over Detour's jumps and for what traffic, and what the other backend
// holds. It exists for `detour debug rules` and `detour debug check`: init/apply can say that
// the rules differ from the plan; this says which rule wins and why that matters.
package ruleset

import (
	"errors"
	"fmt"
	"strings"
)

// Save is one backend's iptables-save output for one family.
type Save struct {
	Tables map[string]*Table
}

// Table is one table of a Save.
type Table struct {
	Name   string
	Chains map[string]*Chain
	Order  []string // chain names as declared
}

// Chain is one chain of a table with its rules in order.
type Chain struct {
	Name   string
	Policy string // ACCEPT, DROP... for a built-in chain; "-" for a user chain
	Rules  []Rule
}

// Rule is one rule as iptables-save printed it.
type Rule struct {
	Table, Chain string
	Index        int      // position in its chain, from 1
	Line         string   // as saved, "-A CHAIN ..."
	Match        []string // the match arguments, quotes removed, without the comment
	Comment      string   // the comment match's text, "" without one
	Target       string   // what -j or -g names; "" for a rule without one
	Goto         bool     // -g: the target chain does not return here
	TargetArgs   []string
}

// Builtin reports whether chain is one of the kernel's.
func Builtin(chain string) bool {
	switch chain {
	case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}

// Parse reads iptables-save output. It is strict about structure (a rule outside a table, an
// unterminated quote) and lenient about the matches themselves, which it keeps as words.
func Parse(text string) (*Save, error) {
	s := &Save{Tables: map[string]*Table{}}
	var t *Table
	n := 0
	for line := range strings.Lines(text) {
		n++
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			name := line[1:]
			if name == "" || t != nil {
				return nil, fmt.Errorf("line %d: table %q begins before the last one's COMMIT", n, name)
			}
			if s.Tables[name] == nil {
				s.Tables[name] = &Table{Name: name, Chains: map[string]*Chain{}}
			}
			t = s.Tables[name]
		case line == "COMMIT":
			if t == nil {
				return nil, fmt.Errorf("line %d: COMMIT outside a table", n)
			}
			t = nil
		case strings.HasPrefix(line, ":"):
			if t == nil {
				return nil, fmt.Errorf("line %d: chain outside a table", n)
			}
			f := strings.Fields(line[1:])
			if len(f) == 0 {
				return nil, fmt.Errorf("line %d: a chain without a name", n)
			}
			policy := "-"
			if len(f) > 1 {
				policy = f[1]
			}
			t.chain(f[0]).Policy = policy
		case strings.HasPrefix(line, "-A "):
			if t == nil {
				return nil, fmt.Errorf("line %d: rule outside a table", n)
			}
			words, err := Split(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			if len(words) < 2 {
				return nil, fmt.Errorf("line %d: a rule without a chain", n)
			}
			r := ruleOf(words[2:])
			c := t.chain(words[1])
			r.Table, r.Chain, r.Index, r.Line = t.Name, c.Name, len(c.Rules)+1, line
			c.Rules = append(c.Rules, r)
		default:
			return nil, fmt.Errorf("line %d: not iptables-save output: %q", n, line)
		}
	}
	if t != nil {
		return nil, fmt.Errorf("table %s has no COMMIT", t.Name)
	}
	return s, nil
}

func (t *Table) chain(name string) *Chain {
	c := t.Chains[name]
	if c == nil {
		c = &Chain{Name: name, Policy: "-"}
		t.Chains[name] = c
		t.Order = append(t.Order, name)
	}
	return c
}

// Chain returns the chain of table, or nil.
func (s *Save) Chain(table, chain string) *Chain {
	if s == nil || s.Tables[table] == nil {
		return nil
	}
	return s.Tables[table].Chains[chain]
}

// ruleOf splits a rule's words (after "-A CHAIN") into matches, comment and target.
func ruleOf(words []string) Rule {
	var r Rule
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case (w == "-j" || w == "-g" || w == "--jump" || w == "--goto") && i+1 < len(words):
			r.Target, r.Goto, r.TargetArgs = words[i+1], w == "-g" || w == "--goto", words[i+2:]
			return r
		case w == "-m" && i+2 < len(words) && words[i+1] == "comment" && words[i+2] == "--comment" && i+3 < len(words):
			r.Comment = words[i+3]
			i += 3
		case w == "-m" && i+1 < len(words) && len(r.Match) >= 2 && r.Match[len(r.Match)-2] == "-p" && r.Match[len(r.Match)-1] == words[i+1]:
			// iptables-save spells out the match a protocol loads ("-p tcp -m tcp"); the
			// rule as written has it implicitly.
			i++
		default:
			r.Match = append(r.Match, w)
		}
	}
	return r
}

// Key is the rule's identity for comparing with a planned rule: its matches, target and
// comment, in the words iptables-save uses.
func (r Rule) Key() string {
	parts := append([]string{}, r.Match...)
	if r.Comment != "" {
		parts = append(parts, "#"+r.Comment)
	}
	if r.Target != "" {
		flag := "-j"
		if r.Goto {
			flag = "-g"
		}
		parts = append(parts, flag, r.Target)
		parts = append(parts, r.TargetArgs...)
	}
	return strings.Join(parts, " ")
}

// Split splits an iptables-save line into words the way iptables-restore does: on spaces,
// with double quotes around a word that holds them and backslash escaping a quote or a
// backslash inside.
func Split(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line) && (line[i+1] == '"' || line[i+1] == '\\'):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}
