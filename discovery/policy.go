package discovery

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/detourmesh/detour/api/discoverypb"
)

// Policy is how the proxy treats a service's requests when things fail: request timeouts,
// retries of requests that failed in the application, the retry budget that bounds them, and
// failure accrual (outlier ejection). Requests that provably never reached the application
// (a failed connection, a refused stream) are sent to another endpoint whatever the policy.
//
// A Policy holds resolved values: the parser fills in the defaults, so a zero field means zero
// (a budget Ratio of 0 allows no retries beyond MinPerSecond).
type Policy struct {
	// Timeout bounds each request, from its headers to the end of its response; 0 means none.
	// A request's own grpc-timeout applies too: the shorter wins.
	Timeout time.Duration
	// Retry says which failures in the application are retried; nil means none are.
	Retry *RetryPolicy
	// Budget bounds retries (of every route) against the service's requests.
	Budget Budget
	// Accrual ejects failing endpoints.
	Accrual Accrual
	// Routes refine the policy per request, first match wins.
	Routes []RoutePolicy
}

// RetryPolicy is when and how often a failed request is tried again, on another endpoint.
type RetryPolicy struct {
	On RetryOn
	// Attempts is the most attempts per request, the first included: 2..10, default 3.
	Attempts int
	// Backoff is the wait before the first retry, doubled for each next one up to MaxBackoff,
	// with full jitter (a random wait between 0 and that). Defaults 25 ms and 250 ms.
	Backoff, MaxBackoff time.Duration
}

// RetryOn is a set of retryable outcomes.
type RetryOn uint16

// Retryable outcomes, as the discovery file names them.
const (
	RetryUnavailable       RetryOn = 1 << iota // gRPC UNAVAILABLE
	RetryInternal                              // gRPC INTERNAL
	RetryResourceExhausted                     // gRPC RESOURCE_EXHAUSTED
	Retry500
	Retry502
	Retry503
	Retry504
	Retry5xx
	// RetryReset: the connection or stream was reset after the request was sent, before any
	// response; only for idempotent requests (RoutePolicy.Idempotent, or the HTTP methods
	// RFC 9110 §9.2.2 calls idempotent).
	RetryReset
)

var retryOnNames = []struct {
	name string
	bit  RetryOn
}{
	{"unavailable", RetryUnavailable}, {"internal", RetryInternal}, {"resource-exhausted", RetryResourceExhausted},
	{"500", Retry500}, {"502", Retry502}, {"503", Retry503}, {"504", Retry504}, {"5xx", Retry5xx}, {"reset", RetryReset},
}

// DefaultRetryOn is what a retry policy retries when it does not say.
const DefaultRetryOn = RetryUnavailable | Retry502 | Retry503 | Retry504 | RetryReset

// ParseRetryOn reads one outcome name.
func ParseRetryOn(s string) (RetryOn, bool) {
	for _, n := range retryOnNames {
		if n.name == s {
			return n.bit, true
		}
	}
	return 0, false
}

// Names lists the outcomes in r, as the discovery file spells them.
func (r RetryOn) Names() []string {
	var out []string
	for _, n := range retryOnNames {
		if r&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// String is the outcomes, comma-separated.
func (r RetryOn) String() string { return strings.Join(r.Names(), ",") }

// Status reports whether a response with HTTP status (and, for a trailers-only gRPC response,
// grpcStatus, else -1) is to be retried.
func (r RetryOn) Status(status, grpcStatus int) bool {
	switch grpcStatus {
	case 14:
		return r&RetryUnavailable != 0
	case 13:
		return r&RetryInternal != 0
	case 8:
		return r&RetryResourceExhausted != 0
	}
	if grpcStatus > 0 {
		return false
	}
	switch {
	case status < 500:
		return false
	case r&Retry5xx != 0:
		return true
	case status == 500:
		return r&Retry500 != 0
	case status == 502:
		return r&Retry502 != 0
	case status == 503:
		return r&Retry503 != 0
	case status == 504:
		return r&Retry504 != 0
	}
	return false
}

// Budget bounds retries: over the sliding Window, retries may add at most Ratio of the requests
// plus MinPerSecond a second, so retries never multiply an overload (linkerd2-proxy, Envoy).
type Budget struct {
	Ratio        float64       // 0..1000, default 0.2
	MinPerSecond float64       // default 10
	Window       time.Duration // 1 s .. 1 h, default 10 s
}

// Accrual is when an endpoint is ejected from picks and for how long (see proxy/balance).
type Accrual struct {
	// ConsecutiveFailures ejects after that many failures in a row; 0 turns it off. Default 5.
	ConsecutiveFailures int
	// FailureRate ejects when failures reach this fraction (0..1) of at least MinRequests
	// requests over Window; 0 (the default) turns it off.
	FailureRate float64
	Window      time.Duration // default 10 s
	MinRequests int           // default 20
	// BaseEjection is the first ejection; each failed probe doubles it up to MaxEjection.
	// Defaults 1 s and 30 s.
	BaseEjection, MaxEjection time.Duration
}

// RoutePolicy refines the policy for the requests it matches.
type RoutePolicy struct {
	// PathPrefix matches the request path ("/stocks.StockData/" for a gRPC service,
	// "/stocks.StockData/GetQuote" for one method); Method, if not empty, the HTTP method.
	PathPrefix, Method string
	// Timeout replaces the service's if positive.
	Timeout time.Duration
	// Retry replaces the service's if not nil.
	Retry *RetryPolicy
	// Idempotent declares the route's requests safe to send twice, so RetryReset applies to
	// them (a gRPC method is a POST; say so here when it may be repeated).
	Idempotent bool
}

// Defaults of a Policy's parts.
var (
	DefaultBudget  = Budget{Ratio: 0.2, MinPerSecond: 10, Window: 10 * time.Second}
	DefaultAccrual = Accrual{ConsecutiveFailures: 5, Window: 10 * time.Second, MinRequests: 20,
		BaseEjection: time.Second, MaxEjection: 30 * time.Second}
)

// DefaultRetry is a retry policy with every default.
func DefaultRetry() RetryPolicy {
	return RetryPolicy{On: DefaultRetryOn, Attempts: 3, Backoff: 25 * time.Millisecond, MaxBackoff: 250 * time.Millisecond}
}

// DefaultPolicy is the policy of a service that sets none: no timeout, no retries of failures
// in the application, the default budget and accrual.
func DefaultPolicy() Policy { return Policy{Budget: DefaultBudget, Accrual: DefaultAccrual} }

// PolicyOf returns s's policy, the default if it has none.
func (s *Service) PolicyOf() *Policy {
	if s.Policy != nil {
		return s.Policy
	}
	return &defaultPolicy
}

var defaultPolicy = DefaultPolicy()

func equalPolicy(a, b *Policy) bool {
	if a == nil || b == nil {
		return a == b || reflect.DeepEqual(a, &defaultPolicy) || reflect.DeepEqual(b, &defaultPolicy)
	}
	return reflect.DeepEqual(a, b)
}

// Match returns the route policy for a request, nil if none matches.
func (p *Policy) Match(method, path string) *RoutePolicy {
	for i := range p.Routes {
		r := &p.Routes[i]
		if strings.HasPrefix(path, r.PathPrefix) && (r.Method == "" || r.Method == method) {
			return r
		}
	}
	return nil
}

// Validate checks resolved values against their bounds; field prefixes the errors' fields.
// The parsers call it, so a Policy from the discovery file, the controller or annotations is
// always in bounds.
func (p *Policy) Validate() []FieldError {
	var errs []FieldError
	bad := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if p.Timeout < 0 || p.Timeout > 24*time.Hour {
		bad("timeout", "%v is out of range (0 for none, at most 24h)", p.Timeout)
	}
	checkRetry := func(field string, r *RetryPolicy) {
		if r == nil {
			return
		}
		if r.Attempts < 2 || r.Attempts > 10 {
			bad(field+".attempts", "%d is out of range (2..10, the first attempt included)", r.Attempts)
		}
		if r.Backoff < 0 || r.Backoff > time.Minute {
			bad(field+".backoff", "%v is out of range (0..1m)", r.Backoff)
		}
		if r.MaxBackoff < r.Backoff || r.MaxBackoff > 10*time.Minute {
			bad(field+".maxBackoff", "%v is out of range (backoff..10m)", r.MaxBackoff)
		}
		if r.On == 0 {
			bad(field+".on", "a retry policy must retry something (known: %s)", strings.Join(RetryOnNames(), ", "))
		}
	}
	checkRetry("retry", p.Retry)
	b := p.Budget
	if !(b.Ratio >= 0 && b.Ratio <= 1000) {
		bad("budget.ratio", "%v is out of range (0..1000: 0.2 lets retries add 20%% to the requests)", b.Ratio)
	}
	if !(b.MinPerSecond >= 0 && b.MinPerSecond <= 1e6) {
		bad("budget.minPerSecond", "%v is out of range (0..1000000)", b.MinPerSecond)
	}
	if b.Window < time.Second || b.Window > time.Hour {
		bad("budget.window", "%v is out of range (1s..1h)", b.Window)
	}
	a := p.Accrual
	if a.ConsecutiveFailures < 0 || a.ConsecutiveFailures > 1000 {
		bad("accrual.consecutiveFailures", "%d is out of range (0 to turn off, at most 1000)", a.ConsecutiveFailures)
	}
	if !(a.FailureRate >= 0 && a.FailureRate <= 1) {
		bad("accrual.failureRate", "%v is out of range (0 to turn off, at most 1)", a.FailureRate)
	}
	if a.Window < time.Second || a.Window > time.Hour {
		bad("accrual.window", "%v is out of range (1s..1h)", a.Window)
	}
	if a.MinRequests < 1 || a.MinRequests > 1e6 {
		bad("accrual.minRequests", "%d is out of range (1..1000000)", a.MinRequests)
	}
	if a.BaseEjection < time.Millisecond || a.BaseEjection > time.Hour {
		bad("accrual.baseEjection", "%v is out of range (1ms..1h)", a.BaseEjection)
	}
	if a.MaxEjection < a.BaseEjection || a.MaxEjection > 24*time.Hour {
		bad("accrual.maxEjection", "%v is out of range (baseEjection..24h)", a.MaxEjection)
	}
	if len(p.Routes) > 100 {
		bad("routes", "%d routes, at most 100", len(p.Routes))
	}
	for i := range p.Routes {
		r := &p.Routes[i]
		f := "routes[" + strconv.Itoa(i) + "]"
		if !strings.HasPrefix(r.PathPrefix, "/") {
			bad(f+".path", "%q must start with / (a path prefix, e.g. /stocks.StockData/)", r.PathPrefix)
		}
		if r.Method != "" && !validMethod(r.Method) {
			bad(f+".method", "%q is not an HTTP method (GET, POST, ...)", r.Method)
		}
		if r.Timeout < 0 || r.Timeout > 24*time.Hour {
			bad(f+".timeout", "%v is out of range (0 for the service's, at most 24h)", r.Timeout)
		}
		checkRetry(f+".retry", r.Retry)
	}
	return errs
}

func validMethod(m string) bool {
	if len(m) == 0 || len(m) > 20 {
		return false
	}
	for i := 0; i < len(m); i++ {
		if m[i] < 'A' || m[i] > 'Z' {
			return false
		}
	}
	return true
}

// RetryOnNames lists every outcome name.
func RetryOnNames() []string {
	out := make([]string, len(retryOnNames))
	for i, n := range retryOnNames {
		out[i] = n.name
	}
	return out
}

// FieldError is one bad value of a policy.
type FieldError struct{ Field, Msg string }

func (e FieldError) Error() string { return e.Field + ": " + e.Msg }

// parseDuration reads a Go duration ("200ms", "2s"); a bare 0 is allowed.
func parseDuration(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (write e.g. 200ms, 2s, 1m)", s)
	}
	return d, nil
}

func parseFloat(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return f, nil
}

func parseInt(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a whole number", s)
	}
	return n, nil
}

// parseRetryOnList reads a list of outcome names.
func parseRetryOnList(names []string) (RetryOn, error) {
	var on RetryOn
	for _, n := range names {
		bit, ok := ParseRetryOn(strings.TrimSpace(n))
		if !ok {
			return 0, fmt.Errorf("unknown outcome %q (known: %s)", n, strings.Join(RetryOnNames(), ", "))
		}
		on |= bit
	}
	return on, nil
}

// Annotation names on a Kubernetes Service that set its Policy (ParseAnnotations). The
// Kubernetes source maps them; every other annotation is ignored.
const (
	AnnotationPrefix           = "config.detour.io/"
	AnnotationTimeout          = AnnotationPrefix + "timeout"            // "2s"
	AnnotationRetryOn          = AnnotationPrefix + "retry-on"           // "unavailable,503,reset"; enables retries
	AnnotationRetryAttempts    = AnnotationPrefix + "retry-attempts"     // "3"
	AnnotationRetryBackoff     = AnnotationPrefix + "retry-backoff"      // "25ms"
	AnnotationRetryMaxBackoff  = AnnotationPrefix + "retry-max-backoff"  // "250ms"
	AnnotationBudgetRatio      = AnnotationPrefix + "retry-budget-ratio" // "0.2"
	AnnotationBudgetMinPerSec  = AnnotationPrefix + "retry-budget-min-per-second"
	AnnotationBudgetWindow     = AnnotationPrefix + "retry-budget-window" // "10s"
	AnnotationAccrualFailures  = AnnotationPrefix + "failure-accrual-consecutive"
	AnnotationAccrualRate      = AnnotationPrefix + "failure-accrual-rate"
	AnnotationAccrualWindow    = AnnotationPrefix + "failure-accrual-window"
	AnnotationAccrualMinReqs   = AnnotationPrefix + "failure-accrual-min-requests"
	AnnotationEjectionBase     = AnnotationPrefix + "ejection-base"
	AnnotationEjectionMax      = AnnotationPrefix + "ejection-max"
	AnnotationIdempotentRoutes = AnnotationPrefix + "idempotent-routes" // "POST /stocks.StockData/GetQuote, GET /"
	AnnotationRouteTimeouts    = AnnotationPrefix + "route-timeouts"    // "/stocks.StockData/GetQuote=200ms"
)

// sourceAnnotations are the config.detour.io/ annotations the Kubernetes source reads itself
// (controller/kube): not policy, and not unknown.
var sourceAnnotations = []string{AnnotationPrefix + "protocol", AnnotationPrefix + "opaque-ports", AnnotationPrefix + "balancer"}

// ParseAnnotations returns the policy that a Service's config.detour.io/ annotations set, nil
// if they set none. Errors name the annotation.
func ParseAnnotations(ann map[string]string) (*Policy, error) {
	keys := make([]string, 0, len(ann))
	for k := range ann {
		if strings.HasPrefix(k, AnnotationPrefix) && !slices.Contains(sourceAnnotations, k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	slices.Sort(keys)
	p := DefaultPolicy()
	var retry *RetryPolicy
	getRetry := func() *RetryPolicy {
		if retry == nil {
			r := DefaultRetry()
			retry = &r
		}
		return retry
	}
	routes := map[string]*RoutePolicy{}
	var order []string
	route := func(method, path string) *RoutePolicy {
		k := method + " " + path
		if r := routes[k]; r != nil {
			return r
		}
		routes[k] = &RoutePolicy{PathPrefix: path, Method: method}
		order = append(order, k)
		return routes[k]
	}
	for _, k := range keys {
		v := strings.TrimSpace(ann[k])
		var err error
		var d time.Duration
		var f float64
		var n int
		switch k {
		case AnnotationTimeout:
			d, err = parseDuration(v)
			p.Timeout = d
		case AnnotationRetryOn:
			var on RetryOn
			on, err = parseRetryOnList(strings.Split(v, ","))
			getRetry().On = on
		case AnnotationRetryAttempts:
			n, err = parseInt(v)
			getRetry().Attempts = n
		case AnnotationRetryBackoff:
			d, err = parseDuration(v)
			getRetry().Backoff = d
			if retry.MaxBackoff < d {
				retry.MaxBackoff = 10 * d
			}
		case AnnotationRetryMaxBackoff:
			d, err = parseDuration(v)
			getRetry().MaxBackoff = d
		case AnnotationBudgetRatio:
			f, err = parseFloat(v)
			p.Budget.Ratio = f
		case AnnotationBudgetMinPerSec:
			f, err = parseFloat(v)
			p.Budget.MinPerSecond = f
		case AnnotationBudgetWindow:
			d, err = parseDuration(v)
			p.Budget.Window = d
		case AnnotationAccrualFailures:
			n, err = parseInt(v)
			p.Accrual.ConsecutiveFailures = n
		case AnnotationAccrualRate:
			f, err = parseFloat(v)
			p.Accrual.FailureRate = f
		case AnnotationAccrualWindow:
			d, err = parseDuration(v)
			p.Accrual.Window = d
		case AnnotationAccrualMinReqs:
			n, err = parseInt(v)
			p.Accrual.MinRequests = n
		case AnnotationEjectionBase:
			d, err = parseDuration(v)
			p.Accrual.BaseEjection = d
			if p.Accrual.MaxEjection < d {
				p.Accrual.MaxEjection = 30 * d
			}
		case AnnotationEjectionMax:
			d, err = parseDuration(v)
			p.Accrual.MaxEjection = d
		case AnnotationIdempotentRoutes:
			for _, item := range strings.Split(v, ",") {
				if item = strings.TrimSpace(item); item == "" {
					continue
				}
				method, path, ok := strings.Cut(item, " ")
				if !ok {
					method, path = "", item
				}
				route(method, strings.TrimSpace(path)).Idempotent = true
			}
		case AnnotationRouteTimeouts:
			for _, item := range strings.Split(v, ",") {
				if item = strings.TrimSpace(item); item == "" {
					continue
				}
				path, ds, ok := strings.Cut(item, "=")
				if !ok {
					err = fmt.Errorf("%q: want path=duration, e.g. /stocks.StockData/GetQuote=200ms", item)
					break
				}
				if d, err = parseDuration(strings.TrimSpace(ds)); err != nil {
					break
				}
				route("", strings.TrimSpace(path)).Timeout = d
			}
		default:
			err = fmt.Errorf("unknown annotation (known: timeout, retry-on, retry-attempts, retry-backoff, retry-max-backoff, retry-budget-ratio, retry-budget-min-per-second, retry-budget-window, failure-accrual-consecutive, failure-accrual-rate, failure-accrual-window, failure-accrual-min-requests, ejection-base, ejection-max, idempotent-routes, route-timeouts)")
		}
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %w", k, err)
		}
	}
	p.Retry = retry
	for _, k := range order {
		r := *routes[k]
		if t := routes[" "+r.PathPrefix]; t != nil && r.Timeout == 0 {
			r.Timeout = t.Timeout // a route timeout is for the path, whatever the method
		}
		p.Routes = append(p.Routes, r)
	}
	if errs := p.Validate(); len(errs) > 0 {
		name := AnnotationPrefix + "..."
		if a, ok := annotationOf[errs[0].Field]; ok {
			name = a
		} else if strings.HasPrefix(errs[0].Field, "routes[") {
			name = AnnotationRouteTimeouts + " or " + AnnotationIdempotentRoutes
		}
		return nil, fmt.Errorf("annotation %s: %s", name, errs[0].Msg)
	}
	return &p, nil
}

// annotationOf names the annotation that sets a Policy field.
var annotationOf = map[string]string{
	"timeout": AnnotationTimeout, "retry.on": AnnotationRetryOn, "retry.attempts": AnnotationRetryAttempts,
	"retry.backoff": AnnotationRetryBackoff, "retry.maxBackoff": AnnotationRetryMaxBackoff,
	"budget.ratio": AnnotationBudgetRatio, "budget.minPerSecond": AnnotationBudgetMinPerSec, "budget.window": AnnotationBudgetWindow,
	"accrual.consecutiveFailures": AnnotationAccrualFailures, "accrual.failureRate": AnnotationAccrualRate,
	"accrual.window": AnnotationAccrualWindow, "accrual.minRequests": AnnotationAccrualMinReqs,
	"accrual.baseEjection": AnnotationEjectionBase, "accrual.maxEjection": AnnotationEjectionMax,
}

// PolicyToProto converts a policy to its wire form; nil for nil (the defaults).
func PolicyToProto(p *Policy) *discoverypb.Policy {
	if p == nil {
		return nil
	}
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	retry := func(r *RetryPolicy) *discoverypb.RetryPolicy {
		if r == nil {
			return nil
		}
		return &discoverypb.RetryPolicy{On: r.On.Names(), Attempts: uint32(r.Attempts), BackoffMs: ms(r.Backoff), MaxBackoffMs: ms(r.MaxBackoff)}
	}
	pb := &discoverypb.Policy{
		TimeoutMs: ms(p.Timeout),
		Retry:     retry(p.Retry),
		Budget:    &discoverypb.Budget{Ratio: p.Budget.Ratio, MinPerSecond: p.Budget.MinPerSecond, WindowMs: ms(p.Budget.Window)},
		Accrual: &discoverypb.Accrual{ConsecutiveFailures: uint32(p.Accrual.ConsecutiveFailures), FailureRate: p.Accrual.FailureRate,
			WindowMs: ms(p.Accrual.Window), MinRequests: uint32(p.Accrual.MinRequests),
			BaseEjectionMs: ms(p.Accrual.BaseEjection), MaxEjectionMs: ms(p.Accrual.MaxEjection)},
	}
	for _, r := range p.Routes {
		pb.Routes = append(pb.Routes, &discoverypb.RoutePolicy{PathPrefix: r.PathPrefix, Method: r.Method,
			TimeoutMs: ms(r.Timeout), Retry: retry(r.Retry), Idempotent: r.Idempotent})
	}
	return pb
}

// PolicyFromProto validates a policy from the controller; nil for nil (the defaults). field
// names it in errors.
func PolicyFromProto(pb *discoverypb.Policy, field string) (*Policy, error) {
	if pb == nil {
		return nil, nil
	}
	ms := func(v int64) time.Duration {
		if v > int64(math.MaxInt64/time.Millisecond) || v < 0 {
			return -1 // out of range: Validate says so
		}
		return time.Duration(v) * time.Millisecond
	}
	var bad error
	retry := func(r *discoverypb.RetryPolicy, f string) *RetryPolicy {
		if r == nil {
			return nil
		}
		on, err := parseRetryOnList(r.GetOn())
		if err != nil && bad == nil {
			bad = protoError(f+".on", err.Error())
		}
		return &RetryPolicy{On: on, Attempts: int(min(r.GetAttempts(), 1000)), Backoff: ms(r.GetBackoffMs()), MaxBackoff: ms(r.GetMaxBackoffMs())}
	}
	p := &Policy{Timeout: ms(pb.GetTimeoutMs()), Retry: retry(pb.GetRetry(), field+".retry")}
	if b := pb.GetBudget(); b != nil {
		p.Budget = Budget{Ratio: b.GetRatio(), MinPerSecond: b.GetMinPerSecond(), Window: ms(b.GetWindowMs())}
	} else {
		p.Budget = DefaultBudget
	}
	if a := pb.GetAccrual(); a != nil {
		p.Accrual = Accrual{ConsecutiveFailures: int(min(a.GetConsecutiveFailures(), 1e6)), FailureRate: a.GetFailureRate(),
			Window: ms(a.GetWindowMs()), MinRequests: int(min(a.GetMinRequests(), 1e7)),
			BaseEjection: ms(a.GetBaseEjectionMs()), MaxEjection: ms(a.GetMaxEjectionMs())}
	} else {
		p.Accrual = DefaultAccrual
	}
	for i, r := range pb.GetRoutes() {
		p.Routes = append(p.Routes, RoutePolicy{PathPrefix: r.GetPathPrefix(), Method: r.GetMethod(), Timeout: ms(r.GetTimeoutMs()),
			Retry: retry(r.GetRetry(), field+".routes["+strconv.Itoa(i)+"].retry"), Idempotent: r.GetIdempotent()})
	}
	if bad != nil {
		return nil, bad
	}
	if errs := p.Validate(); len(errs) > 0 {
		return nil, protoError(join(field, errs[0].Field), errs[0].Msg)
	}
	return p, nil
}
