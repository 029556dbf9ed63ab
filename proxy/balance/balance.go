// Package balance chooses an endpoint for every request, so that one client connection's
// requests spread over all of a service's endpoints instead of sticking to the one a
// connection-level balancer (kube-proxy) happened to pick.
//
// It exists as its own package because that choice sits on the per-request path and must be
// cheap and never block: a Balancer keeps its endpoint set in an immutable picker that Update
// swaps whole (grpc-go's Picker), Pick reads it with one atomic load and no lock, and the
// per-endpoint load statistics are updated with atomics. Pick plus Done costs tens of
// nanoseconds and allocates nothing.
//
// Two algorithms match discovery.Balancer: P2C (power of two choices over peak-EWMA latency,
// as linkerd2-proxy and Finagle do) and RoundRobin (weighted, deterministic order).
//
// Who calls what:
//   - Pick is called by request goroutines, any number at once. It never blocks.
//   - Done is called exactly once per successful Pick, by whichever goroutine sees the request
//     end, possibly a different one from the picker's. It never blocks.
//   - Update is called by the goroutine that follows discovery (any goroutine; calls are
//     serialized internally). It may run concurrently with Pick and Done: picks made before
//     it complete against the same per-endpoint statistics, which are carried over, keyed by
//     address, to the endpoints that remain.
package balance

import (
	"errors"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detourmesh/detour/discovery"
)

// ErrNoEndpoints is returned by Pick when the service has no endpoints. The proxy fails the
// request (HTTP 503, or closes the connection) rather than sending it elsewhere.
var ErrNoEndpoints = errors.New("service has no endpoints")

// Balancer chooses endpoints for requests to one service.
//
// Endpoints that fail too often are ejected (failure accrual, see Accrual): picks avoid them
// until their ejection ends and a probe request succeeds, except when every endpoint is ejected,
// when picks go on over all of them (panic mode), as Envoy does: ejection never empties a service.
type Balancer interface {
	// Pick chooses an endpoint for one request and counts the request as in flight there.
	// The caller must call Done on the result exactly once when the request ends. It fails
	// only with ErrNoEndpoints.
	Pick() (Pick, error)
	// PickOther is Pick avoiding the endpoint at addr (a retry goes elsewhere); it returns
	// that endpoint only when it is the service's only one.
	PickOther(addr netip.AddrPort) (Pick, error)
	// Eject takes the endpoint at addr out of picks at once (a dial to it failed), as failures
	// would; it is probed back like any ejected endpoint. No-op for an address not in the set.
	Eject(addr netip.AddrPort)
	// Update replaces the endpoint set. Endpoints keep their statistics across updates while
	// their address stays in the set. The balancer copies endpoints.
	Update(endpoints []discovery.Endpoint)
	// Stats returns every endpoint's load and state, for debugging. It allocates.
	Stats() []EndpointStats
}

// New returns the balancer a service asks for.
func New(kind discovery.Balancer, opts Options) Balancer {
	if kind == discovery.BalancerRoundRobin {
		return NewRoundRobinWith(opts)
	}
	return NewP2C(opts)
}

// Pick is one endpoint choice. It is a small value: pass it by value, do not keep it past Done.
type Pick struct {
	// Endpoint is the chosen endpoint. It is shared and must not be modified.
	Endpoint *discovery.Endpoint
	e        *entry
	hs       *healthSet
	b        *P2C // nil for round robin: no latency to feed
}

// Done reports that the request ended. rtt is the latency the caller measured, typically from
// sending the request to receiving the response headers (the time the endpoint made the
// caller wait); rtt <= 0 means no sample (for a relayed TCP connection, call Done when it closes
// with rtt 0, or with the connect time). A non-nil err marks a failure the endpoint is to blame
// for (connect refused, reset, timeout): see DoneWith. Call Done or DoneWith exactly once.
func (p Pick) Done(err error, rtt time.Duration) { p.DoneWith(rtt, err != nil) }

// DoneWith is Done with the caller's verdict: failed marks a failure of the endpoint (one the
// caller classifies so: a lost connection, an HTTP 503, a gRPC UNAVAILABLE). A failure counts
// as a latency of at least Options.FailurePenalty, so P2C steers away from the endpoint until
// the penalty decays, and toward its ejection (Accrual). Other application errors (an HTTP 404,
// a gRPC NOT_FOUND) are successes here.
func (p Pick) DoneWith(rtt time.Duration, failed bool) {
	if p.e == nil {
		return
	}
	st := p.e.st
	st.inflight.Add(-1)
	p.hs.record(p.e, failed)
	if p.b == nil {
		return
	}
	if failed && rtt < p.b.penalty {
		rtt = p.b.penalty
	}
	if rtt > 0 {
		st.observe(p.b.now(), float64(rtt), p.b.decayTicks, failed)
	}
}

// EndpointStats describes one endpoint's load, for /debug/endpoints.
type EndpointStats struct {
	Endpoint discovery.Endpoint
	InFlight int64
	// RTT is the current peak-EWMA latency estimate (decayed to now); for an endpoint with no
	// sample yet it is the decayed default and Sampled is false. Zero for round robin.
	RTT     time.Duration
	Sampled bool
	// State is StateUp, StateEjected (until EjectedUntil) or StateProbing; the failures in a
	// row so far and the ejections ever.
	State               string
	EjectedUntil        time.Time
	ConsecutiveFailures int
	Ejections           int64
}

// stats is what the balancer knows about one endpoint address. It outlives pickers: Update
// carries it to the next picker while the address stays.
type stats struct {
	inflight atomic.Int64
	// ewma packs the peak-EWMA estimate and the time it was last updated into one word so a
	// single compare-and-swap updates both: the top 24 bits are a float32 in nanoseconds
	// with its 8 low mantissa bits dropped (relative precision 3e-5), negative while the
	// value is the unsampled default; the low 40 bits are the update time in ticks of
	// 2^17 ns (131 µs), which wrap after 4.5 years.
	ewma   atomic.Uint64
	health health
	_      [64]byte // keep endpoints' counters on separate cache lines
}

const (
	tickShift = 17
	stampBits = 40
	stampMask = 1<<stampBits - 1
)

// penaltyBit, the estimate's lowest mantissa bit (a relative 3e-5 of it), marks an estimate
// that is a failure's penalty rather than a latency.
const penaltyBit = 1 << stampBits

func pack(est float32, tick uint64) uint64 {
	return (uint64(math.Float32bits(est)>>8)<<stampBits | tick&stampMask) &^ penaltyBit
}

func unpack(v uint64) (est float32, tick uint64) {
	return math.Float32frombits(uint32(v>>stampBits) << 8), v & stampMask
}

// entry is one endpoint in a picker.
type entry struct {
	ep        discovery.Endpoint
	st        *stats
	invWeight float64
}

// endpointSet carries statistics across updates and the failure accrual; shared by both
// algorithms.
type endpointSet struct {
	mu    sync.Mutex
	stats map[netip.AddrPort]*stats
	hs    healthSet
}

func (s *endpointSet) init(opts Options) {
	s.hs.cfg = opts.Accrual
	s.hs.cfg.setDefaults()
	s.hs.clock = newClock(opts.Now)
	s.hs.onEject = opts.OnEject
}

// entries builds picker entries for eps, reusing the stats of addresses already known and
// forgetting those that left. init sets up a new endpoint's stats.
func (s *endpointSet) entries(eps []discovery.Endpoint, init func(*stats)) []entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[netip.AddrPort]*stats, len(eps))
	out := make([]entry, len(eps))
	for i, ep := range eps {
		st := next[ep.Addr]
		if st == nil {
			st = s.stats[ep.Addr]
		}
		if st == nil {
			st = new(stats)
			init(st)
		}
		next[ep.Addr] = st
		w := ep.Weight
		if w == 0 {
			w = 1 // discovery rejects 0; a zero here must not divide by zero
		}
		out[i] = entry{ep: ep, st: st, invWeight: 1 / float64(w)}
	}
	s.stats = next
	return out
}
