package balance

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/detourmesh/detour/discovery"
)

// RoundRobin hands out endpoints in a fixed cycle, each endpoint appearing as often as its
// weight (smooth weighted round robin, as nginx does, so a heavy endpoint's turns are spread
// through the cycle instead of coming in a burst). It ignores latency and load; P2C is the
// default for that reason. One atomic counter per endpoint set is the only shared write.
type RoundRobin struct {
	set    endpointSet
	picker atomic.Pointer[rrPicker]
}

var _ Balancer = (*RoundRobin)(nil)

type rrPicker struct {
	eps      []entry
	schedule []uint32 // indexes into eps, one cycle; nil when all weights are equal
	next     atomic.Uint64
}

// maxSchedule bounds one weighted cycle. Larger weight sums are scaled down to fit, which
// keeps proportions to within one slot in maxSchedule.
const maxSchedule = 4096

// NewRoundRobin returns an empty round-robin balancer with the default Options; Update gives
// it endpoints.
func NewRoundRobin() *RoundRobin { return NewRoundRobinWith(Options{}) }

// NewRoundRobinWith returns an empty round-robin balancer; of opts it uses the clock and the
// accrual settings.
func NewRoundRobinWith(opts Options) *RoundRobin {
	b := &RoundRobin{}
	b.set.init(opts)
	b.picker.Store(&rrPicker{})
	return b
}

// Update implements Balancer. The cycle restarts.
func (b *RoundRobin) Update(endpoints []discovery.Endpoint) {
	eps := b.set.entries(endpoints, func(*stats) {})
	b.picker.Store(&rrPicker{eps: eps, schedule: schedule(eps)})
	b.set.hs.recount(eps)
}

// Pick implements Balancer.
func (b *RoundRobin) Pick() (Pick, error) { return b.pick(netip.AddrPort{}) }

// PickOther implements Balancer.
func (b *RoundRobin) PickOther(addr netip.AddrPort) (Pick, error) { return b.pick(addr) }

// Eject implements Balancer.
func (b *RoundRobin) Eject(addr netip.AddrPort) { b.set.hs.ejectAddr(b.picker.Load().eps, addr) }

func (b *RoundRobin) pick(avoid netip.AddrPort) (Pick, error) {
	p := b.picker.Load()
	if len(p.eps) == 0 {
		return Pick{}, ErrNoEndpoints
	}
	n := p.next.Add(1) - 1
	var e *entry
	if p.schedule == nil {
		e = &p.eps[n%uint64(len(p.eps))]
	} else {
		e = &p.eps[p.schedule[n%uint64(len(p.schedule))]]
	}
	if len(p.eps) > 1 && (e.ep.Addr == avoid || b.set.hs.ejected.Load() > 0 && !b.set.hs.available(e, b.set.hs.clock)) {
		// Off the cycle: the next endpoint that may take it.
		e = b.set.hs.choose(p.eps, avoid, nil)
	}
	e.st.inflight.Add(1)
	return Pick{Endpoint: &e.ep, e: e, hs: &b.set.hs}, nil
}

// schedule lays out one smooth weighted round-robin cycle, or returns nil when the weights are
// all equal and plain rotation is the same thing.
func schedule(eps []entry) []uint32 {
	if len(eps) == 0 {
		return nil
	}
	weights := make([]uint64, len(eps))
	equal := true
	var sum uint64
	for i, e := range eps {
		weights[i] = max(uint64(e.ep.Weight), 1)
		sum += weights[i]
		equal = equal && weights[i] == weights[0]
	}
	if equal {
		return nil
	}
	g := weights[0]
	for _, w := range weights[1:] {
		g = gcd(g, w)
	}
	sum = 0
	for i := range weights {
		weights[i] /= g
		sum += weights[i]
	}
	if limit := uint64(max(maxSchedule, len(eps))); sum > limit {
		// Scale into the limit, keeping every endpoint in the cycle at least once.
		scaled := uint64(0)
		for i, w := range weights {
			weights[i] = max(w*(limit-uint64(len(eps)))/sum, 1)
			scaled += weights[i]
		}
		sum = scaled
	}
	out := make([]uint32, 0, sum)
	current := make([]int64, len(eps))
	for range sum {
		best := 0
		for i, w := range weights {
			current[i] += int64(w)
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= int64(sum)
		out = append(out, uint32(best))
	}
	return out
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// Stats returns every endpoint's in-flight count, for debugging. It allocates.
func (b *RoundRobin) Stats() []EndpointStats {
	p := b.picker.Load()
	out := make([]EndpointStats, len(p.eps))
	wall := time.Now()
	for i := range p.eps {
		out[i] = EndpointStats{Endpoint: p.eps[i].ep, InFlight: p.eps[i].st.inflight.Load()}
		b.set.hs.healthStats(&p.eps[i], &out[i], wall)
	}
	return out
}
