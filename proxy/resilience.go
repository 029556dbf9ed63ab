package proxy

import (
	"net/netip"
	"time"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/proxy/balance"
	"github.com/detourmesh/detour/proxy/h2"
	"github.com/detourmesh/detour/proxy/http1"
	"github.com/detourmesh/detour/proxy/metrics"
	"github.com/detourmesh/detour/proxy/retry"
)

// Resilience, the proxy's half: the h2 engine finds that an attempt failed and can be sent
// again (h2.Retrier); the proxy decides whether it is, by the service's policy and budget, and
// where to: another endpoint, from the service's balancer. A service's retriers are built with
// its table entry, one per route policy and one for the service, so routing a request picks one
// by pointer and allocates nothing.

// retrier is the h2.Retrier of one service route.
type retrier struct {
	p          *Proxy
	svc        *service
	retry      *discovery.RetryPolicy // nil: only what never reached the application is resent
	idempotent bool
	timeout    time.Duration
}

// maxUnreached bounds the resends of a request that never reached any application: each goes
// to another endpoint, and a dial failure ejects its endpoint, so this is about the service's
// size; past it the request fails rather than spin.
func maxUnreached(endpoints int) int { return min(endpoints+2, 10) }

// Retry implements h2.Retrier. It runs with the stream's lock held and never blocks: the budget
// and the balancer are atomics.
func (r *retrier) Retry(a *h2.Attempt) (h2.Route, time.Duration, bool) {
	pk, delay, ok := r.decide(a.Reason, a.Addr, a.Attempts, a.Status, a.GRPCStatus, a.Head.Method, a.Remaining)
	if !ok {
		return h2.Route{}, 0, false
	}
	done := pk.done
	return h2.Route{Addr: pk.addr, Done: func(res h2.Result) { done(h2Outcome(res)) }, Retry: r}, delay, true
}

// h1Retrier is the http1.Retrier of one service route: the same decisions as its h2 one.
type h1Retrier retrier

// Retry implements http1.Retrier.
func (r *h1Retrier) Retry(a *http1.Attempt) (http1.Route, time.Duration, bool) {
	reason := h2.RetryStatus
	switch a.Reason {
	case http1.RetryDialFailed:
		reason = h2.RetryDialFailed
	case http1.RetryRefused:
		// Only a Detour proxy (a meshed endpoint, its answer authenticated by mutual TLS) says
		// so; from anything else it is an answer like another.
		if _, meshed := r.p.routes.identity(a.Addr); meshed {
			reason = h2.RetryRefused
		}
	case http1.RetryReset:
		reason = h2.RetryReset
	}
	pk, delay, ok := (*retrier)(r).decide(reason, a.Addr, a.Attempts, a.Status, -1, a.Method, a.Remaining)
	if !ok {
		return http1.Route{}, 0, false
	}
	done := pk.done
	return http1.Route{Addr: pk.addr, Done: func(res http1.Result) { done(h1Outcome(res)) }, Retry: r, Timeout: r.timeout}, delay, true
}

// decide is whether a failed attempt (to addr, the attempts-th, for the reason given) goes to
// another endpoint, which, and after what backoff, for either engine.
func (r *retrier) decide(reason h2.RetryReason, addr netip.AddrPort, attempts, status, grpcStatus int, method string, remaining time.Duration) (picked, time.Duration, bool) {
	svc := r.svc
	var delay time.Duration
	if reason.Unreached() {
		// It cannot take requests now (its application is down, or it is going away): out of
		// every pick at once, probed back by accrual.
		svc.balancer.Eject(addr)
		n := len(svc.Endpoints)
		if attempts >= maxUnreached(n) {
			return picked{}, 0, false
		}
		if attempts >= n {
			// Every endpoint was tried: give them a moment rather than a busy loop.
			delay = retry.Backoff(attempts-n+1, 10*time.Millisecond, 200*time.Millisecond)
		}
	} else {
		rp := r.retry
		if rp == nil || attempts >= rp.Attempts {
			return picked{}, 0, false
		}
		switch reason {
		case h2.RetryStatus:
			if !rp.On.Status(status, grpcStatus) {
				return picked{}, 0, false
			}
		case h2.RetryReset:
			if rp.On&discovery.RetryReset == 0 || !(r.idempotent || idempotentMethod(method)) {
				return picked{}, 0, false
			}
		}
		delay = retry.Backoff(attempts, rp.Backoff, rp.MaxBackoff)
		if remaining > 0 && delay >= remaining {
			return picked{}, 0, false
		}
		if !svc.budget.Withdraw() {
			r.p.metrics.BudgetExhausted(svc.Name)
			return picked{}, 0, false
		}
	}
	pick, err := svc.balancer.PickOther(addr)
	if err != nil {
		return picked{}, 0, false
	}
	r.p.metrics.Retried(svc.Name, addr, reason.String())
	return r.p.outboundPicked(svc, pick), delay, true
}

// idempotentMethod: RFC 9110 §9.2.2.
func idempotentMethod(m string) bool {
	switch m {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// route returns the retrier for a request to svc: its route policy's, else the service's.
func (svc *service) route(method, path string) *retrier {
	if len(svc.retriers) == 1 {
		return &svc.retriers[0]
	}
	pol := svc.PolicyOf()
	for i := range pol.Routes {
		rp := &pol.Routes[i]
		if len(path) >= len(rp.PathPrefix) && path[:len(rp.PathPrefix)] == rp.PathPrefix && (rp.Method == "" || rp.Method == method) {
			return &svc.retriers[i]
		}
	}
	return &svc.retriers[len(svc.retriers)-1]
}

// buildRetriers makes svc's retriers: one per route policy, then the service's own.
func (p *Proxy) buildRetriers(svc *service) {
	pol := svc.PolicyOf()
	svc.retriers = make([]retrier, 0, len(pol.Routes)+1)
	for _, rp := range pol.Routes {
		r := retrier{p: p, svc: svc, retry: pol.Retry, idempotent: rp.Idempotent, timeout: pol.Timeout}
		if rp.Retry != nil {
			r.retry = rp.Retry
		}
		if rp.Timeout > 0 {
			r.timeout = rp.Timeout
		}
		svc.retriers = append(svc.retriers, r)
	}
	svc.retriers = append(svc.retriers, retrier{p: p, svc: svc, retry: pol.Retry, timeout: pol.Timeout})
}

// balanceOptions are the balancer options of a service with policy pol.
func (r *routes) balanceOptions(name string, pol *discovery.Policy) balance.Options {
	opts := r.opts
	a := pol.Accrual
	opts.Accrual = balance.Accrual{ConsecutiveFailures: a.ConsecutiveFailures, FailureRate: a.FailureRate, Window: a.Window,
		MinRequests: a.MinRequests, BaseEjection: a.BaseEjection, MaxEjection: a.MaxEjection}
	if a.ConsecutiveFailures == 0 {
		opts.Accrual.ConsecutiveFailures = -1 // off
	}
	if r.onEject != nil {
		opts.OnEject = func(addr netip.AddrPort, d time.Duration) { r.onEject(name, addr, d) }
	}
	return opts
}

// ejectEverywhere marks addr down in every service that has it: a dial to it failed, or its
// connection stopped answering keepalives. It is rare, so a scan of the resolved services is fine.
func (r *routes) ejectEverywhere(addr netip.AddrPort) {
	t := r.current.Load()
	if t == nil {
		return
	}
	for _, svc := range t.services {
		for i := range svc.Endpoints {
			if svc.Endpoints[i].Addr == addr {
				svc.balancer.Eject(addr)
				break
			}
		}
	}
}

// accrualFailure is whether an outcome counts against the endpoint: a failure the engine
// blames on it, a 5xx, a gRPC status saying it could not serve, or a deadline it let pass.
func (o outcome) accrualFailure() bool {
	if o.upstream && o.err != nil || o.timedOut || o.status >= 500 {
		return true
	}
	switch o.grpcStatus {
	case 14, 13, 2, 15: // UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS
		return true
	}
	return false
}

var _ = metrics.Outbound
