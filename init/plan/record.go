package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// The record: the flags init was run with, kept in the namespace's own rules as the comments of
// rules that never match, so that `detour debug rules` can read them back from the node and
// compare what is installed with what init meant to install. The rules are the one thing init
// and the debugging CLI are sure to share: an init container's files live in its own mount
// namespace and are gone with it, while the network namespace's rules are readable from the
// node for as long as the pod lives.
//
// The record is the canonical text of the Config (Config.Encode), cut into chunks that fit an
// iptables comment (at most 255 bytes), each written as
//
//	detour/config/<i>/<n>/<sum>:<chunk>
//
// where i counts from 1 to n and sum is the first 8 hex digits of the SHA-256 of the whole text,
// so a chunk lost or edited by hand is noticed. The rules sit at the end of DETOUR_OUTBOUND,
// after its final REDIRECT of all TCP: the chain is entered for TCP only, so they never match a
// packet, and having no target they would do nothing if they did.

// recordPurpose starts the purpose of every record rule.
const recordPurpose = "config/"

// recordChunk bounds the record text per rule: with the prefix well under the 255 bytes an
// iptables comment keeps (iptables-save shows a longer one cut short).
const recordChunk = 200

// encodingVersion starts the canonical text; a decoder refuses versions it does not know.
const encodingVersion = "v1"

// Encode returns c as canonical text, e.g.
// "v1;in=7143;out=7140;admin=7190;uid=2102;skip-in=22,9000-9100;skip-out=5432;skip-cidr=10.0.0.0/8;pod=web-1;pod-namespace=shop".
// Empty lists are left out. DecodeConfig reverses it.
func (c Config) Encode() string {
	fields := []string{encodingVersion,
		"in=" + strconv.Itoa(int(c.InboundPort)),
		"out=" + strconv.Itoa(int(c.OutboundPort)),
		"admin=" + strconv.Itoa(int(c.AdminPort)),
		"uid=" + strconv.FormatUint(uint64(c.ProxyUID), 10),
	}
	ports := func(rs []PortRange) string {
		s := make([]string, len(rs))
		for i, r := range rs {
			s[i] = strconv.Itoa(int(r.First))
			if r.Last != r.First {
				s[i] += "-" + strconv.Itoa(int(r.Last))
			}
		}
		return strings.Join(s, ",")
	}
	if len(c.SkipInboundPorts) > 0 {
		fields = append(fields, "skip-in="+ports(c.SkipInboundPorts))
	}
	if len(c.SkipOutboundPorts) > 0 {
		fields = append(fields, "skip-out="+ports(c.SkipOutboundPorts))
	}
	if len(c.SkipOutboundCIDRs) > 0 {
		s := make([]string, len(c.SkipOutboundCIDRs))
		for i, p := range c.SkipOutboundCIDRs {
			s[i] = p.String()
		}
		fields = append(fields, "skip-cidr="+strings.Join(s, ","))
	}
	if c.PodName != "" {
		fields = append(fields, "pod="+c.PodName)
	}
	if c.PodNamespace != "" {
		fields = append(fields, "pod-namespace="+c.PodNamespace)
	}
	return strings.Join(fields, ";")
}

// DecodeConfig parses the text of Encode. The result is validated: a record that decodes is one
// init could have written.
func DecodeConfig(s string) (Config, error) {
	fields := strings.Split(s, ";")
	if fields[0] != encodingVersion {
		return Config{}, fmt.Errorf("record version %q: want %s", fields[0], encodingVersion)
	}
	var c Config
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		key, val, ok := strings.Cut(f, "=")
		if !ok {
			return Config{}, fmt.Errorf("record field %q: want key=value", f)
		}
		if seen[key] {
			return Config{}, fmt.Errorf("record field %q twice", key)
		}
		seen[key] = true
		var err error
		switch key {
		case "in", "out", "admin":
			var p uint16
			if p, err = parsePort(val); err == nil {
				switch key {
				case "in":
					c.InboundPort = p
				case "out":
					c.OutboundPort = p
				default:
					c.AdminPort = p
				}
			}
		case "uid":
			var n uint64
			if n, err = strconv.ParseUint(val, 10, 32); err == nil {
				c.ProxyUID = uint32(n)
			}
		case "skip-in":
			c.SkipInboundPorts, err = parseNonEmpty(val, ParsePorts)
		case "skip-out":
			c.SkipOutboundPorts, err = parseNonEmpty(val, ParsePorts)
		case "skip-cidr":
			c.SkipOutboundCIDRs, err = parseNonEmpty(val, ParseCIDRs)
		case "pod":
			c.PodName = val
			if val == "" {
				err = errors.New("empty")
			}
		case "pod-namespace":
			c.PodNamespace = val
			if val == "" {
				err = errors.New("empty")
			}
		default:
			return Config{}, fmt.Errorf("record field %q unknown", key)
		}
		if err != nil {
			return Config{}, fmt.Errorf("record field %s: %w", key, err)
		}
	}
	for _, k := range []string{"in", "out", "admin", "uid"} {
		if !seen[k] {
			return Config{}, fmt.Errorf("record field %s missing", k)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("record holds an invalid configuration: %w", err)
	}
	return c, nil
}

func parseNonEmpty[T any](s string, parse func(string) ([]T, error)) ([]T, error) {
	v, err := parse(s)
	if err == nil && len(v) == 0 {
		err = errors.New("empty list")
	}
	return v, err
}

// recordRules are the rules that carry c's record.
func recordRules(c Config) []Rule {
	text := c.Encode()
	sum := recordSum(text)
	var chunks []string
	for len(text) > recordChunk {
		chunks = append(chunks, text[:recordChunk])
		text = text[recordChunk:]
	}
	chunks = append(chunks, text)
	rules := make([]Rule, len(chunks))
	for i, ch := range chunks {
		rules[i] = Rule{Chain: ChainOutbound, Purpose: fmt.Sprintf("%s%d/%d/%s:%s", recordPurpose, i+1, len(chunks), sum, ch)}
	}
	return rules
}

// IsRecord reports whether r is one of the rules that carry the record.
func (r Rule) IsRecord() bool { return strings.HasPrefix(r.Purpose, recordPurpose) }

func recordSum(text string) string {
	h := sha256.Sum256([]byte(text))
	return hex.EncodeToString(h[:4])
}

// Record is what ReadRecord found.
type Record struct {
	Config Config
	Sum    string // the checksum the record carried, which names it
}

// ErrNoRecord is returned by ReadRecord when no comment carries a record: rules installed by
// an init older than the record, or by hand.
var ErrNoRecord = errors.New("no detour/config record among the rules")

// ReadRecord decodes the record from the comments of a family's rules (as iptables-save shows
// them, without quotes, in any order; comments that are not a record's are ignored).
func ReadRecord(comments []string) (Record, error) {
	type chunk struct {
		i, n int
		text string
	}
	bySum := map[string][]chunk{}
	for _, cm := range comments {
		rest, ok := strings.CutPrefix(cm, CommentPrefix+recordPurpose)
		if !ok {
			continue
		}
		head, text, ok := strings.Cut(rest, ":")
		parts := strings.Split(head, "/")
		if !ok || len(parts) != 3 {
			return Record{}, fmt.Errorf("record comment %q: want detour/config/<i>/<n>/<sum>:<text>", cm)
		}
		i, err1 := strconv.Atoi(parts[0])
		n, err2 := strconv.Atoi(parts[1])
		if err1 != nil || err2 != nil || n < 1 || n > 64 || i < 1 || i > n {
			return Record{}, fmt.Errorf("record comment %q: bad chunk numbers", cm)
		}
		bySum[parts[2]] = append(bySum[parts[2]], chunk{i, n, text})
	}
	if len(bySum) == 0 {
		return Record{}, ErrNoRecord
	}
	if len(bySum) > 1 {
		sums := make([]string, 0, len(bySum))
		for s := range bySum {
			sums = append(sums, s)
		}
		slices.Sort(sums)
		return Record{}, fmt.Errorf("records of %d configurations (%s): rules of several init runs are mixed", len(sums), strings.Join(sums, ", "))
	}
	var sum string
	for s := range bySum {
		sum = s
	}
	chunks := bySum[sum]
	n := chunks[0].n
	parts := make([]string, n)
	got := make([]bool, n)
	for _, c := range chunks {
		if c.n != n || got[c.i-1] {
			return Record{}, fmt.Errorf("record %s: chunks disagree or repeat", sum)
		}
		parts[c.i-1], got[c.i-1] = c.text, true
	}
	if slices.Contains(got, false) {
		return Record{}, fmt.Errorf("record %s: %d of %d chunks present", sum, len(chunks), n)
	}
	text := strings.Join(parts, "")
	if recordSum(text) != sum {
		return Record{}, fmt.Errorf("record %s: checksum does not match its text (edited by hand?)", sum)
	}
	c, err := DecodeConfig(text)
	if err != nil {
		return Record{}, fmt.Errorf("record %s: %w", sum, err)
	}
	return Record{Config: c, Sum: sum}, nil
}
