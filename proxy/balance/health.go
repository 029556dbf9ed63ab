package balance

import (
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"
)

// Accrual configures failure accrual (outlier ejection): an endpoint that fails too often is
// taken out of picks for a while, then probed back. The zero value gives the defaults; a
// negative ConsecutiveFailures turns consecutive-failure ejection off, a zero FailureRate
// leaves rate ejection off.
type Accrual struct {
	// ConsecutiveFailures ejects an endpoint after that many failures in a row; default 5.
	ConsecutiveFailures int
	// FailureRate ejects an endpoint whose failures reach this fraction of its requests over
	// Window, once it has seen MinRequests there; 0 (the default) turns it off.
	FailureRate float64
	Window      time.Duration // default 10 s
	MinRequests int           // default 20
	// BaseEjection is the first ejection's length; each ejection in a row (a probe that
	// failed) doubles it, up to MaxEjection, with ±10 % jitter. Defaults 1 s and 30 s.
	BaseEjection, MaxEjection time.Duration
}

func (a *Accrual) setDefaults() {
	if a.ConsecutiveFailures == 0 {
		a.ConsecutiveFailures = 5
	}
	if a.Window <= 0 {
		a.Window = 10 * time.Second
	}
	if a.MinRequests <= 0 {
		a.MinRequests = 20
	}
	if a.BaseEjection <= 0 {
		a.BaseEjection = time.Second
	}
	if a.MaxEjection <= 0 {
		a.MaxEjection = 30 * time.Second
	}
	if a.MaxEjection < a.BaseEjection {
		a.MaxEjection = a.BaseEjection
	}
}

// Endpoint states, as /debug/endpoints shows them.
const (
	StateUp      = "up"
	StateEjected = "ejected"
	StateProbing = "probing" // ejection over: one request at a time tells whether it is back
)

const (
	healthUp uint32 = iota
	healthEjected
	healthProbing
)

// health is one endpoint's failure accrual, updated with atomics on the Done path.
//
// The state machine: up --(ConsecutiveFailures failures in a row, the failure rate, or Eject)-->
// ejected until T --(a Pick after T)--> probing: that one request is the probe; its success
// makes the endpoint up again (backoff reset), its failure ejects it for twice as long. While
// probing, no other request is sent there. Probing by a real request rather than a connection
// attempt tests what matters (the application answers, not only its port) and costs nothing
// extra when the endpoint is dead: a request that could not connect is sent elsewhere
// (h2.RetryDialFailed).
type health struct {
	state     atomic.Uint32
	until     atomic.Int64 // clock ns when the ejection ends
	consec    atomic.Int32 // failures in a row
	ejections atomic.Int32 // ejections in a row: the backoff exponent
	total     atomic.Int64 // ejections ever, for metrics
	winStart  atomic.Int64 // clock ns the rate window began
	winReqs   atomic.Int32
	winFails  atomic.Int32
}

// healthSet is what both balancers share for accrual.
type healthSet struct {
	cfg     Accrual
	clock   func() int64 // ns since the balancer's epoch
	ejected atomic.Int32 // endpoints not up (ejected or probing) across the current picker
	// OnEject, if set, is told of each ejection (metrics); it must not block.
	onEject func(addr netip.AddrPort, d time.Duration)
	// onReadmit forgets what the balancer learnt of an endpoint before a probe readmitted it
	// (P2C: the failures' latency penalty), so that it takes its share again at once rather
	// than once the penalty has decayed, a minute later.
	onReadmit func(*stats)
}

func newClock(now func() time.Time) func() int64 {
	if now == nil {
		epoch := time.Now()
		return func() int64 { return int64(time.Since(epoch)) }
	}
	epoch := now()
	return func() int64 { return int64(now().Sub(epoch)) }
}

// record feeds one request's result into e's accrual.
func (hs *healthSet) record(e *entry, failed bool) {
	h := &e.st.health
	// The clock only where it is needed: the common success of an endpoint that is up, with
	// no rate window, reads two atomics and nothing else.
	var now int64
	if hs.cfg.FailureRate > 0 || failed {
		now = hs.clock()
	}
	if hs.cfg.FailureRate > 0 {
		if ws := h.winStart.Load(); now-ws > int64(hs.cfg.Window) && h.winStart.CompareAndSwap(ws, now) {
			h.winReqs.Store(0)
			h.winFails.Store(0)
		}
		h.winReqs.Add(1)
	}
	switch h.state.Load() {
	case healthProbing:
		if failed {
			hs.eject(e, now)
		} else if h.state.CompareAndSwap(healthProbing, healthUp) {
			h.consec.Store(0)
			h.ejections.Store(0)
			hs.ejected.Add(-1)
			if hs.onReadmit != nil {
				hs.onReadmit(e.st)
			}
		}
		return
	case healthEjected:
		return // a request picked before the ejection (or in panic mode) says nothing new
	}
	if !failed {
		if h.consec.Load() != 0 {
			h.consec.Store(0)
		}
		return
	}
	n := h.consec.Add(1)
	if hs.cfg.ConsecutiveFailures > 0 && int(n) >= hs.cfg.ConsecutiveFailures {
		hs.eject(e, now)
		return
	}
	if hs.cfg.FailureRate > 0 {
		f, r := h.winFails.Add(1), h.winReqs.Load()
		if int(r) >= hs.cfg.MinRequests && float64(f) >= hs.cfg.FailureRate*float64(r) {
			hs.eject(e, now)
		}
	}
}

// eject takes e out of picks from now, for the backoff its ejections in a row call for.
func (hs *healthSet) eject(e *entry, now int64) {
	h := &e.st.health
	for {
		old := h.state.Load()
		if old == healthEjected {
			return
		}
		if h.state.CompareAndSwap(old, healthEjected) {
			if old == healthUp {
				hs.ejected.Add(1)
			}
			break
		}
	}
	k := min(h.ejections.Add(1)-1, 20)
	d := min(hs.cfg.BaseEjection<<k, hs.cfg.MaxEjection)
	d += time.Duration((rand.Float64()*0.2 - 0.1) * float64(d))
	h.until.Store(now + int64(d))
	h.consec.Store(0)
	h.winReqs.Store(0)
	h.winFails.Store(0)
	h.total.Add(1)
	if hs.onEject != nil {
		hs.onEject(e.ep.Addr, d)
	}
}

// available reports whether e may take a request now; an ejection that is over turns into
// probing, and the one caller that made it so gets the probe.
func (hs *healthSet) available(e *entry, now func() int64) bool {
	h := &e.st.health
	switch h.state.Load() {
	case healthUp:
		return true
	case healthEjected:
		return now() >= h.until.Load() && h.state.CompareAndSwap(healthEjected, healthProbing)
	}
	return false
}

// choose picks among eps avoiding ejected endpoints and, if avoid is valid, the endpoint at that
// address, drawing two candidates for cmp (nil: take the first). When nothing else is left it
// falls back to every endpoint but avoid, then to all of them (panic mode: an ejection never
// empties a service). It is the slow path, taken only while some endpoint is not up or a retry
// avoids one.
func (hs *healthSet) choose(eps []entry, avoid netip.AddrPort, cheaper func(e, f *entry) bool) *entry {
	n := len(eps)
	var now int64 = -1
	clock := func() int64 {
		if now < 0 {
			now = hs.clock()
		}
		return now
	}
	var got [2]*entry
	k := 0
	// Random draws first (P2C wants two random candidates); then a scan from a random start
	// for whatever the draws missed.
	start := rand.IntN(n)
	for i := range n {
		e := &eps[(start+i)%n]
		if e.ep.Addr == avoid || e == got[0] {
			continue
		}
		if hs.available(e, clock) {
			if e.st.health.state.Load() == healthProbing {
				return e // the probe goes out now
			}
			got[k] = e
			if k++; k == 2 || cheaper == nil {
				break
			}
		}
	}
	switch {
	case k == 2:
		if cheaper(got[1], got[0]) {
			return got[1]
		}
		return got[0]
	case k == 1:
		return got[0]
	}
	// Panic mode: every endpoint (but avoid) is ejected.
	for i := range n {
		if e := &eps[(start+i)%n]; e.ep.Addr != avoid {
			return e
		}
	}
	return &eps[start]
}

// ejectAddr ejects the endpoint at addr, if it is in eps and up.
func (hs *healthSet) ejectAddr(eps []entry, addr netip.AddrPort) {
	for i := range eps {
		if eps[i].ep.Addr == addr {
			if eps[i].st.health.state.Load() == healthUp {
				hs.eject(&eps[i], hs.clock())
			}
			return
		}
	}
}

// recount sets the ejected count from a new picker's entries.
func (hs *healthSet) recount(eps []entry) {
	n := int32(0)
	for i := range eps {
		if eps[i].st.health.state.Load() != healthUp {
			n++
		}
	}
	hs.ejected.Store(n)
}

// healthStats fills the accrual part of an endpoint's stats.
func (hs *healthSet) healthStats(e *entry, out *EndpointStats, wall time.Time) {
	h := &e.st.health
	out.ConsecutiveFailures = int(h.consec.Load())
	out.Ejections = h.total.Load()
	switch h.state.Load() {
	case healthUp:
		out.State = StateUp
	case healthEjected:
		out.State = StateEjected
		out.EjectedUntil = wall.Add(time.Duration(h.until.Load() - hs.clock()))
	default:
		out.State = StateProbing
	}
}
