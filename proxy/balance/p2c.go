package balance

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/detourmesh/detour/discovery"
)

// Options tunes P2C. The zero value gives the defaults.
type Options struct {
	// DefaultRTT is the estimate Stats reports for an endpoint before its first response;
	// default 1 ms. It is never compared: P2C judges a pair in which either endpoint has no
	// sample yet by in-flight load alone, so a new endpoint takes an even share until it has
	// answered (linkerd2-proxy assumes 30 ms instead, a slow start), and the first endpoints to
	// answer a burst do not draw the rest of it away from equal peers still unsampled.
	DefaultRTT time.Duration
	// Decay is the time constant of the moving average; default 10 s (linkerd2-proxy, Finagle).
	// A sample above the estimate is taken at once (the "peak"); below it, the estimate moves
	// toward the sample by 1-exp(-elapsed/Decay). Without samples an estimate decays toward
	// zero, so an endpoint that was slow once is tried again rather than shunned for ever.
	Decay time.Duration
	// FailurePenalty is the least latency a failed request counts as; default 1 s. It is what
	// makes P2C avoid an endpoint that fails fast (a refused connection looks quick). The
	// penalty holds for FailurePenaltyFor: past it, an endpoint that has not failed again is
	// judged by its load alone, so it gets a request now and then, which either succeeds
	// (the penalty is forgotten: its latency is what it was) or fails and renews it, and
	// counts toward its ejection (Accrual). Without that limit a single failure would keep a
	// recovered endpoint out for about Decay×ln(FailurePenalty/peer latency), a minute.
	FailurePenalty    time.Duration
	FailurePenaltyFor time.Duration // default 250 ms
	// Now is the clock; default time.Now. Tests pass a fake.
	Now func() time.Time
	// Accrual configures the ejection of failing endpoints (both algorithms).
	Accrual Accrual
	// OnEject, if set, is told of every ejection and its length (metrics); it must not block.
	OnEject func(addr netip.AddrPort, d time.Duration)
}

// P2C is the power-of-two-choices balancer over peak-EWMA latency (Mitzenmacher; linkerd2-proxy,
// Finagle): Pick draws two distinct endpoints at random and takes the cheaper, where
//
//	cost = peakEWMA(rtt) × (in-flight requests + 1) / weight.
//
// Latency makes it shun slow endpoints, in-flight counts make it react before latency shows,
// and two random choices avoid the herd behaviour of always taking the global minimum with
// stale information.
//
// Weights scale cost, so under load an endpoint of weight 3 carries about three times the
// in-flight requests of one of weight 1. With no load at all (every request finished before
// the next starts) the heavier endpoint wins every comparison it is drawn into; use RoundRobin
// where exact proportions matter more than latency.
type P2C struct {
	set        endpointSet
	picker     atomic.Pointer[[]entry]
	defaultRTT float64
	decayTicks float64 // Decay in ticks
	penalty    time.Duration
	penaltyFor int64         // FailurePenaltyFor in ticks
	now        func() uint64 // ticks
}

var _ Balancer = (*P2C)(nil)

// NewP2C returns an empty P2C balancer; Update gives it endpoints.
func NewP2C(opts Options) *P2C {
	if opts.DefaultRTT <= 0 {
		opts.DefaultRTT = time.Millisecond
	}
	if opts.Decay <= 0 {
		opts.Decay = 10 * time.Second
	}
	if opts.FailurePenalty <= 0 {
		opts.FailurePenalty = time.Second
	}
	if opts.FailurePenaltyFor <= 0 {
		opts.FailurePenaltyFor = 250 * time.Millisecond
	}
	b := &P2C{
		defaultRTT: float64(opts.DefaultRTT),
		decayTicks: float64(opts.Decay) / (1 << tickShift),
		penalty:    opts.FailurePenalty,
		penaltyFor: int64(opts.FailurePenaltyFor) >> tickShift,
	}
	b.set.init(opts)
	// time.Since on a monotonic reading skips the wall clock: the cheapest clock Go has.
	clock := b.set.hs.clock
	b.now = func() uint64 { return uint64(clock()) >> tickShift }
	b.set.hs.onReadmit = func(st *stats) { st.ewma.Store(pack(-float32(b.defaultRTT), b.now())) }
	empty := []entry{}
	b.picker.Store(&empty)
	return b
}

// Update implements Balancer.
func (b *P2C) Update(endpoints []discovery.Endpoint) {
	now := b.now()
	eps := b.set.entries(endpoints, func(st *stats) {
		st.ewma.Store(pack(-float32(b.defaultRTT), now))
	})
	b.picker.Store(&eps)
	b.set.hs.recount(eps)
}

// Pick implements Balancer.
func (b *P2C) Pick() (Pick, error) { return b.pick(netip.AddrPort{}) }

// PickOther implements Balancer.
func (b *P2C) PickOther(addr netip.AddrPort) (Pick, error) { return b.pick(addr) }

// Eject implements Balancer.
func (b *P2C) Eject(addr netip.AddrPort) { b.set.hs.ejectAddr(*b.picker.Load(), addr) }

func (b *P2C) pick(avoid netip.AddrPort) (Pick, error) {
	eps := *b.picker.Load()
	n := uint64(len(eps))
	var e *entry
	switch {
	case n == 0:
		return Pick{}, ErrNoEndpoints
	case n == 1:
		e = &eps[0]
	case avoid.IsValid() || b.set.hs.ejected.Load() > 0:
		e = b.set.hs.choose(eps, avoid, b.cheaper)
	default:
		// One 64-bit draw gives both indexes; Lemire's multiply-shift maps 32 random bits
		// onto [0,n) without a division.
		r := rand.Uint64()
		i := (r & 0xffffffff) * n >> 32
		j := (r >> 32) * (n - 1) >> 32
		if j >= i {
			j++
		}
		e, f := &eps[i], &eps[j]
		if b.cheaper(f, e) {
			e = f
		}
		e.st.inflight.Add(1)
		return Pick{Endpoint: &e.ep, e: e, hs: &b.set.hs, b: b}, nil
	}
	e.st.inflight.Add(1)
	return Pick{Endpoint: &e.ep, e: e, hs: &b.set.hs, b: b}, nil
}

// cheaper reports whether e costs less than f now. Both estimates decay by the same factor
// from the later of their update times to now, so comparing them needs only the decay between
// their update times, not the clock: Pick does not read the time.
func (b *P2C) cheaper(e, f *entry) bool {
	ev, fv := e.st.ewma.Load(), f.st.ewma.Load()
	eEst, eTick := unpack(ev)
	fEst, fTick := unpack(fv)
	// The tick difference, sign-extended from 40 bits: positive when e was updated later.
	d := int64((eTick-fTick)<<(64-stampBits)) >> (64 - stampBits)
	ePen, fPen := ev&penaltyBit != 0, fv&penaltyBit != 0
	if eEst < 0 || fEst < 0 || ePen && !fPen && -d > b.penaltyFor || fPen && !ePen && d > b.penaltyFor {
		// One side has no latency sample yet, or a failure's penalty that is over (it has not
		// failed again since its peer's later samples): judge by load alone rather than
		// against a guess. Otherwise the first endpoints to answer a burst look faster than
		// the default RTT and draw the rest of it, however equal the endpoints are.
		return float64(e.st.inflight.Load()+1)*e.invWeight < float64(f.st.inflight.Load()+1)*f.invWeight
	}
	ec := math.Abs(float64(eEst)) * float64(e.st.inflight.Load()+1) * e.invWeight
	fc := math.Abs(float64(fEst)) * float64(f.st.inflight.Load()+1) * f.invWeight
	if d > 0 {
		fc *= expNeg(float64(d) / b.decayTicks)
	} else if d < 0 {
		ec *= expNeg(float64(-d) / b.decayTicks)
	}
	return ec < fc
}

// expNeg returns e^-x for x >= 0. Decay factors are mostly for a few milliseconds against a
// 10 s time constant, where a short Taylor series is exact to 1e-8 and four times cheaper than
// math.Exp.
func expNeg(x float64) float64 {
	if x < 1.0/64 {
		return 1 - x*(1-x*(0.5-x*(1.0/6)))
	}
	return math.Exp(-x)
}

// decayed returns the estimate in ns, decayed toward zero for the time since its last update.
func decayed(v uint64, now uint64, decayTicks float64) float64 {
	est, tick := unpack(v)
	e := math.Abs(float64(est))
	if elapsed := (now - tick) & stampMask; elapsed > 0 && elapsed < stampMask/2 {
		e *= expNeg(float64(elapsed) / decayTicks)
	}
	return e
}

// observe folds one latency sample (ns) into the estimate; failed marks it a failure's
// penalty, and the first success after one replaces it.
func (st *stats) observe(now uint64, sample float64, decayTicks float64, failed bool) {
	for {
		old := st.ewma.Load()
		est, tick := unpack(old)
		var next float64
		switch {
		case est < 0 || float64(est) < sample || !failed && old&penaltyBit != 0:
			// The first sample replaces the guessed default; a sample above the estimate is
			// taken at once: the peak.
			next = sample
		default:
			w := 1.0
			if elapsed := (now - tick) & stampMask; elapsed < stampMask/2 {
				w = expNeg(float64(elapsed) / decayTicks)
			}
			next = float64(est)*w + sample*(1-w)
		}
		v := pack(float32(next), now)
		if failed {
			v |= penaltyBit
		}
		if st.ewma.CompareAndSwap(old, v) {
			return
		}
	}
}

// Stats returns every endpoint's load, for debugging. It allocates.
func (b *P2C) Stats() []EndpointStats {
	eps := *b.picker.Load()
	now := b.now()
	out := make([]EndpointStats, len(eps))
	wall := time.Now()
	for i := range eps {
		v := eps[i].st.ewma.Load()
		est, _ := unpack(v)
		out[i] = EndpointStats{
			Endpoint: eps[i].ep,
			InFlight: eps[i].st.inflight.Load(),
			RTT:      time.Duration(decayed(v, now, b.decayTicks)),
			Sampled:  est >= 0,
		}
		b.set.hs.healthStats(&eps[i], &out[i], wall)
	}
	return out
}
