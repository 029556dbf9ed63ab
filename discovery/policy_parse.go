package discovery

import (
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// policyFields are the service fields that make its Policy.
var policyFields = []string{"timeout", "retry", "budget", "accrual", "routes"}

// policyParser reads a service's policy fields, remembering each value's node so that a value
// out of bounds (Policy.Validate) is reported at its line.
type policyParser struct {
	p     *parser
	path  string
	nodes map[string]*yaml.Node // policy field path -> node
	set   bool
	pol   Policy
}

func newPolicyParser(p *parser, path string) *policyParser {
	return &policyParser{p: p, path: path, nodes: map[string]*yaml.Node{}, pol: DefaultPolicy()}
}

func (pp *policyParser) scalar(v *yaml.Node, rel string) (string, bool) {
	pp.nodes[rel] = v
	return pp.p.str(v, join(pp.path, rel))
}

func (pp *policyParser) duration(v *yaml.Node, rel string, dst *bool) (d int64) {
	s, ok := pp.scalar(v, rel)
	if !ok {
		return 0
	}
	dur, err := parseDuration(s)
	if err != nil {
		pp.p.errorf(v, join(pp.path, rel), "%v", err)
		return 0
	}
	if dst != nil {
		*dst = true
	}
	return int64(dur)
}

func (pp *policyParser) number(v *yaml.Node, rel string) float64 {
	s, ok := pp.scalar(v, rel)
	if !ok {
		return 0
	}
	f, err := parseFloat(s)
	if err != nil {
		pp.p.errorf(v, join(pp.path, rel), "%v", err)
	}
	return f
}

func (pp *policyParser) integer(v *yaml.Node, rel string) int {
	s, ok := pp.scalar(v, rel)
	if !ok {
		return 0
	}
	n, err := parseInt(s)
	if err != nil {
		pp.p.errorf(v, join(pp.path, rel), "%v", err)
	}
	return n
}

func (pp *policyParser) boolean(v *yaml.Node, rel string) bool {
	s, ok := pp.scalar(v, rel)
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(s)
	if err != nil || v.ShortTag() != "!!bool" {
		pp.p.errorf(v, join(pp.path, rel), "want true or false, got %s", describe(v))
	}
	return b
}

// field reads one of policyFields.
func (pp *policyParser) field(key string, v *yaml.Node) {
	pp.set = true
	pol := &pp.pol
	switch key {
	case "timeout":
		pol.Timeout = durationOf(pp.duration(v, "timeout", nil))
	case "retry":
		pol.Retry = pp.retry(v, "retry")
	case "budget":
		pp.nodes["budget"] = v
		pp.p.fields(v, join(pp.path, "budget"), []string{"ratio", "minPerSecond", "window"}, func(k string, v *yaml.Node) {
			rel := "budget." + k
			switch k {
			case "ratio":
				pol.Budget.Ratio = pp.number(v, rel)
			case "minPerSecond":
				pol.Budget.MinPerSecond = pp.number(v, rel)
			case "window":
				pol.Budget.Window = durationOf(pp.duration(v, rel, nil))
			}
		})
	case "accrual":
		pp.nodes["accrual"] = v
		var maxSet bool
		pp.p.fields(v, join(pp.path, "accrual"), []string{"consecutiveFailures", "failureRate", "window", "minRequests", "baseEjection", "maxEjection"}, func(k string, v *yaml.Node) {
			rel := "accrual." + k
			a := &pol.Accrual
			switch k {
			case "consecutiveFailures":
				a.ConsecutiveFailures = pp.integer(v, rel)
			case "failureRate":
				a.FailureRate = pp.number(v, rel)
			case "window":
				a.Window = durationOf(pp.duration(v, rel, nil))
			case "minRequests":
				a.MinRequests = pp.integer(v, rel)
			case "baseEjection":
				a.BaseEjection = durationOf(pp.duration(v, rel, nil))
			case "maxEjection":
				a.MaxEjection = durationOf(pp.duration(v, rel, &maxSet))
			}
		})
		if !maxSet && pol.Accrual.MaxEjection < pol.Accrual.BaseEjection {
			pol.Accrual.MaxEjection = 30 * pol.Accrual.BaseEjection
		}
	case "routes":
		pp.nodes["routes"] = v
		if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null" {
			return
		}
		for i, rn := range pp.p.list(v, join(pp.path, "routes")) {
			rel := "routes[" + strconv.Itoa(i) + "]"
			pp.nodes[rel] = rn
			var r RoutePolicy
			seen := pp.p.fields(rn, join(pp.path, rel), []string{"path", "method", "timeout", "retry", "idempotent"}, func(k string, v *yaml.Node) {
				switch k {
				case "path":
					r.PathPrefix, _ = pp.scalar(v, rel+".path")
				case "method":
					r.Method, _ = pp.scalar(v, rel+".method")
				case "timeout":
					r.Timeout = durationOf(pp.duration(v, rel+".timeout", nil))
				case "retry":
					r.Retry = pp.retry(v, rel+".retry")
				case "idempotent":
					r.Idempotent = pp.boolean(v, rel+".idempotent")
				}
			})
			pp.p.require(seen, rn, join(pp.path, rel), "path")
			pol.Routes = append(pol.Routes, r)
		}
	}
}

func (pp *policyParser) retry(v *yaml.Node, rel string) *RetryPolicy {
	pp.nodes[rel] = v
	r := DefaultRetry()
	var maxSet bool
	pp.p.fields(v, join(pp.path, rel), []string{"on", "attempts", "backoff", "maxBackoff"}, func(k string, v *yaml.Node) {
		f := rel + "." + k
		switch k {
		case "on":
			pp.nodes[f] = v
			var names []string
			for i, n := range pp.p.list(v, join(pp.path, f)) {
				if s, ok := pp.p.str(n, join(pp.path, f)+"["+strconv.Itoa(i)+"]"); ok {
					names = append(names, s)
				}
			}
			on, err := parseRetryOnList(names)
			if err != nil {
				pp.p.errorf(v, join(pp.path, f), "%v", err)
			}
			r.On = on
		case "attempts":
			r.Attempts = pp.integer(v, f)
		case "backoff":
			r.Backoff = durationOf(pp.duration(v, f, nil))
		case "maxBackoff":
			r.MaxBackoff = durationOf(pp.duration(v, f, &maxSet))
		}
	})
	if !maxSet && r.MaxBackoff < r.Backoff {
		r.MaxBackoff = 10 * r.Backoff
	}
	return &r
}

// finish validates the policy, reporting each bad value at its line; nil when the service set
// no policy field (it takes the default).
func (pp *policyParser) finish(svcNode *yaml.Node) *Policy {
	if !pp.set {
		return nil
	}
	for _, e := range pp.pol.Validate() {
		n := pp.nodes[e.Field]
		for f := e.Field; n == nil && f != ""; {
			// A value left to its default: report at the enclosing field.
			i := lastDot(f)
			if i < 0 {
				break
			}
			f = f[:i]
			n = pp.nodes[f]
		}
		if n == nil {
			n = svcNode
		}
		pp.p.errorf(n, join(pp.path, e.Field), "%s", e.Msg)
	}
	pol := pp.pol
	return &pol
}

func lastDot(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' || s[i] == '[' {
			return i
		}
	}
	return -1
}

func durationOf(ns int64) time.Duration { return time.Duration(ns) }
