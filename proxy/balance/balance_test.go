package balance

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourmesh/detour/discovery"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func newFakeClock() *fakeClock               { c := &fakeClock{}; c.ns.Store(1e18); return c }
func addr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 8080)
}
func endpoints(weights ...uint32) []discovery.Endpoint {
	eps := make([]discovery.Endpoint, len(weights))
	for i, w := range weights {
		eps[i] = discovery.Endpoint{Addr: addr(i + 1), Weight: w}
	}
	return eps
}

// request is one outstanding request in a simulation.
type request struct {
	pick Pick
	end  time.Duration
}

type requests []request

func (q requests) Len() int           { return len(q) }
func (q requests) Less(i, j int) bool { return q[i].end < q[j].end }
func (q requests) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *requests) Push(x any)        { *q = append(*q, x.(request)) }
func (q *requests) Pop() any {
	old := *q
	r := old[len(old)-1]
	*q = old[:len(old)-1]
	return r
}

// simulate runs a closed loop of `concurrency` clients against b for n requests: whenever a
// request completes (at the simulated time its endpoint's latency says), the client sends the
// next. It returns how many requests each endpoint address served. Time is simulated, so the
// outcome does not depend on the machine's speed.
func simulate(t *testing.T, b Balancer, clock *fakeClock, latency func(netip.AddrPort) time.Duration, concurrency, n int) map[netip.AddrPort]int {
	t.Helper()
	counts := make(map[netip.AddrPort]int)
	var q requests
	var now time.Duration
	start := func() {
		p, err := b.Pick()
		if err != nil {
			t.Fatal(err)
		}
		counts[p.Endpoint.Addr]++
		heap.Push(&q, request{pick: p, end: now + latency(p.Endpoint.Addr)})
	}
	for range concurrency {
		start()
	}
	for i := concurrency; i < n; i++ {
		r := heap.Pop(&q).(request)
		clock.Advance(r.end - now)
		now = r.end
		r.pick.Done(nil, latency(r.pick.Endpoint.Addr))
		start()
	}
	for q.Len() > 0 {
		r := heap.Pop(&q).(request)
		r.pick.Done(nil, 0)
	}
	return counts
}

func constLatency(d time.Duration) func(netip.AddrPort) time.Duration {
	return func(netip.AddrPort) time.Duration { return d }
}

func TestP2CSpread(t *testing.T) {
	const n = 100_000
	tests := []struct {
		name        string
		weights     []uint32
		latency     func(netip.AddrPort) time.Duration
		concurrency int
		// want is each endpoint's expected share; got must be within tolerance (relative).
		want      []float64
		tolerance float64
	}{
		{
			name:        "equal endpoints share evenly when requests do not overlap",
			weights:     []uint32{1, 1, 1, 1},
			latency:     constLatency(time.Millisecond),
			concurrency: 1,
			want:        []float64{.25, .25, .25, .25},
			tolerance:   .15,
		},
		{
			name:        "equal endpoints share evenly under load",
			weights:     []uint32{1, 1, 1, 1, 1},
			latency:     constLatency(time.Millisecond),
			concurrency: 32,
			want:        []float64{.2, .2, .2, .2, .2},
			tolerance:   .15,
		},
		{
			name:        "weights set the shares under load",
			weights:     []uint32{1, 3},
			latency:     constLatency(time.Millisecond),
			concurrency: 32,
			want:        []float64{.25, .75},
			tolerance:   .15,
		},
		{
			name:    "an endpoint ten times slower gets a small share under load",
			weights: []uint32{1, 1, 1, 1},
			latency: func(a netip.AddrPort) time.Duration {
				if a == addr(4) {
					return 10 * time.Millisecond
				}
				return time.Millisecond
			},
			concurrency: 16,
			// Little's law: the slow endpoint holds requests 10x longer, and its cost is 10x.
			want:      []float64{.33, .33, .33, .01},
			tolerance: 1, // checked below: the slow share is what matters
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			b := NewP2C(Options{Now: clock.Now})
			b.Update(endpoints(tt.weights...))
			counts := simulate(t, b, clock, tt.latency, tt.concurrency, n)
			for i, want := range tt.want {
				got := float64(counts[addr(i+1)]) / n
				if math.Abs(got-want) > tt.tolerance*want {
					t.Errorf("endpoint %d: share %.3f, want %.3f ± %.0f%%", i+1, got, want, tt.tolerance*100)
				}
			}
			for _, st := range b.Stats() {
				if st.InFlight != 0 {
					t.Errorf("%v has %d in flight after every request finished", st.Endpoint.Addr, st.InFlight)
				}
			}
			if tt.tolerance == 1 {
				slow := float64(counts[addr(4)]) / n
				if slow > .05 {
					t.Errorf("the slow endpoint got %.3f of requests, want under 0.05 (counts %v)", slow, counts)
				}
			}
		})
	}
}

func TestP2CShiftsAwayFromInFlightLoad(t *testing.T) {
	clock := newFakeClock()
	b := NewP2C(Options{Now: clock.Now})
	// Load endpoint 1 alone with three requests that do not finish, then add endpoint 2.
	b.Update(endpoints(1))
	var held []Pick
	for range 3 {
		p, _ := b.Pick()
		held = append(held, p)
	}
	b.Update(endpoints(1, 1))
	for i := range 1000 {
		p, _ := b.Pick()
		if p.Endpoint.Addr != addr(2) {
			t.Fatalf("pick %d went to endpoint 1, which has 3 requests in flight and no more latency", i)
		}
		p.Done(nil, time.Millisecond)
	}
	for _, p := range held {
		p.Done(nil, time.Millisecond)
	}
	// Released, endpoint 1 is as cheap as endpoint 2 again and gets about half.
	ones := 0
	for range 1000 {
		p, _ := b.Pick()
		if p.Endpoint.Addr == addr(1) {
			ones++
		}
		p.Done(nil, time.Millisecond)
	}
	if ones < 400 || ones > 600 {
		t.Errorf("endpoint 1 got %d of 1000 picks after its load was released, want about half", ones)
	}
}

func TestP2CPenalizesFailures(t *testing.T) {
	clock := newFakeClock()
	b := NewP2C(Options{Now: clock.Now})
	b.Update(endpoints(1, 1, 1))
	counts := map[netip.AddrPort]int{}
	for range 10_000 {
		p, _ := b.Pick()
		counts[p.Endpoint.Addr]++
		var err error
		if p.Endpoint.Addr == addr(3) {
			err = errors.New("connection refused") // fails fast: 50 µs
		}
		clock.Advance(100 * time.Microsecond)
		p.Done(err, 50*time.Microsecond)
	}
	if counts[addr(3)] > 10 {
		t.Errorf("the failing endpoint got %d of 10000 picks, want almost none: %v", counts[addr(3)], counts)
	}
	// A minute later the penalty has decayed enough for the endpoint to be tried again.
	clock.Advance(time.Minute)
	for _, st := range b.Stats() {
		if st.Endpoint.Addr == addr(3) && st.RTT > 5*time.Millisecond {
			t.Errorf("penalty still %v after a minute", st.RTT)
		}
	}
}

func TestPeakEWMA(t *testing.T) {
	const decay = 10 * time.Second
	ms := float64(time.Millisecond)
	advance := func(d time.Duration) ewmaStep { return ewmaStep{advance: d} }
	sample := func(d time.Duration) ewmaStep { return ewmaStep{sample: d, observe: true} }
	later := func(d, s time.Duration) ewmaStep { return ewmaStep{advance: d, sample: s, observe: true} }
	tests := []struct {
		name    string
		steps   []ewmaStep
		wantRTT float64 // ns
		sampled bool
	}{
		{"an endpoint without samples costs the default", nil, ms, false},
		{"the default decays toward zero", []ewmaStep{advance(decay)}, ms / math.E, false},
		{"the first sample replaces the default", []ewmaStep{sample(300 * time.Microsecond)}, .3 * ms, true},
		{"the first sample replaces the default even when lower and late", []ewmaStep{later(decay, 300*time.Microsecond)}, .3 * ms, true},
		{"a higher sample is taken at once", []ewmaStep{sample(time.Millisecond), later(time.Millisecond, 50*time.Millisecond)}, 50 * ms, true},
		{"a lower sample moves the estimate by the time since the last one",
			[]ewmaStep{sample(10 * time.Millisecond), later(decay, time.Millisecond)}, 10*ms/math.E + ms*(1-1/math.E), true},
		{"a lower sample right after a peak barely moves it",
			[]ewmaStep{sample(10 * time.Millisecond), later(time.Millisecond, time.Millisecond)}, 10 * ms, true},
		{"an idle estimate decays toward zero", []ewmaStep{sample(10 * time.Millisecond), advance(2 * decay)}, 10 * ms / (math.E * math.E), true},
		{"a failure counts as at least the penalty", []ewmaStep{sample(time.Millisecond), {fail: true, sample: time.Millisecond}}, 1000 * ms, true},
		{"a slow failure counts as its latency", []ewmaStep{{fail: true, sample: 3 * time.Second}}, 3000 * ms, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			b := NewP2C(Options{Now: clock.Now})
			b.Update(endpoints(1))
			for _, s := range tt.steps {
				clock.Advance(s.advance)
				if s.observe || s.fail {
					p, _ := b.Pick()
					var err error
					if s.fail {
						err = errors.New("connection reset")
					}
					p.Done(err, s.sample)
				}
			}
			got := b.Stats()[0]
			if got.Sampled != tt.sampled {
				t.Errorf("Sampled = %v, want %v", got.Sampled, tt.sampled)
			}
			// 1% covers the 131 µs clock ticks and the 24-bit packed estimate.
			if rel := math.Abs(float64(got.RTT)-tt.wantRTT) / tt.wantRTT; rel > .01 {
				t.Errorf("RTT = %v, want %v", got.RTT, time.Duration(tt.wantRTT))
			}
		})
	}
}

type ewmaStep struct {
	advance time.Duration
	sample  time.Duration
	observe bool
	fail    bool
}

func TestUpdateKeepsStatsOfEndpointsThatStay(t *testing.T) {
	clock := newFakeClock()
	b := NewP2C(Options{Now: clock.Now})
	b.Update(endpoints(1, 1))
	p, _ := b.Pick()
	kept := p.Endpoint.Addr
	p.Done(nil, 7*time.Millisecond)
	held, _ := b.Pick()
	heldAddr := held.Endpoint.Addr

	// Replace the set with the kept endpoint and a new one; the held pick finishes later.
	b.Update([]discovery.Endpoint{{Addr: kept, Weight: 2}, {Addr: addr(9), Weight: 1}})
	stats := map[netip.AddrPort]EndpointStats{}
	for _, s := range b.Stats() {
		stats[s.Endpoint.Addr] = s
	}
	if s := stats[kept]; !s.Sampled || s.RTT.Round(time.Microsecond) != 7*time.Millisecond || s.Endpoint.Weight != 2 {
		t.Errorf("kept endpoint: %+v, want its 7ms sample and the new weight 2", s)
	}
	if s := stats[addr(9)]; s.Sampled || s.InFlight != 0 {
		t.Errorf("new endpoint: %+v, want no sample and nothing in flight", s)
	}
	held.Done(nil, time.Millisecond)
	if heldAddr == kept && stats[kept].InFlight != 1 {
		t.Errorf("a pick made before Update is not counted in flight after it")
	}
	for _, s := range b.Stats() {
		if s.InFlight != 0 {
			t.Errorf("%v: %d in flight after every pick finished", s.Endpoint.Addr, s.InFlight)
		}
	}

	// An endpoint that leaves and comes back starts afresh.
	b.Update([]discovery.Endpoint{{Addr: addr(9), Weight: 1}})
	b.Update([]discovery.Endpoint{{Addr: kept, Weight: 1}})
	if s := b.Stats()[0]; s.Sampled {
		t.Errorf("an endpoint that left and came back kept its old sample")
	}
}

func TestPickWithoutEndpoints(t *testing.T) {
	for _, b := range []Balancer{NewP2C(Options{}), NewRoundRobin()} {
		t.Run(fmt.Sprintf("%T fails with ErrNoEndpoints", b), func(t *testing.T) {
			if _, err := b.Pick(); !errors.Is(err, ErrNoEndpoints) {
				t.Errorf("Pick on a new balancer = %v, want ErrNoEndpoints", err)
			}
			b.Update(endpoints(1))
			b.Update(nil)
			if _, err := b.Pick(); !errors.Is(err, ErrNoEndpoints) {
				t.Errorf("Pick after Update(nil) = %v, want ErrNoEndpoints", err)
			}
			var zero Pick
			zero.Done(errors.New("x"), time.Second) // a zero Pick is inert
		})
	}
}

func TestNewChoosesTheServiceBalancer(t *testing.T) {
	if _, ok := New(discovery.BalancerRoundRobin, Options{}).(*RoundRobin); !ok {
		t.Error("round-robin did not give a RoundRobin")
	}
	if _, ok := New(discovery.BalancerP2CEWMA, Options{}).(*P2C); !ok {
		t.Error("p2c-ewma did not give a P2C")
	}
}

func TestRoundRobin(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
		want    string // the order of one cycle, by endpoint number
	}{
		{"equal endpoints take turns", []uint32{1, 1, 1}, "123"},
		{"one endpoint always answers", []uint32{5}, "1"},
		{"weights repeat an endpoint, spread through the cycle", []uint32{5, 1, 1}, "1121311"},
		{"common factors of weights are removed", []uint32{200, 100}, "121"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewRoundRobin()
			b.Update(endpoints(tt.weights...))
			got := ""
			for range 2 * len(tt.want) {
				p, _ := b.Pick()
				got += fmt.Sprint(p.Endpoint.Addr.Addr().As4()[3])
				p.Done(nil, 0)
			}
			if got != tt.want+tt.want {
				t.Errorf("two cycles: %s, want %s", got, tt.want+tt.want)
			}
		})
	}
}

func TestRoundRobinScalesHugeWeights(t *testing.T) {
	b := NewRoundRobin()
	b.Update(endpoints(math.MaxUint32, math.MaxUint32/3, 1))
	p := b.picker.Load()
	if len(p.schedule) > maxSchedule {
		t.Fatalf("cycle of %d slots, want at most %d", len(p.schedule), maxSchedule)
	}
	counts := make([]int, 3)
	for _, i := range p.schedule {
		counts[i]++
	}
	if counts[2] == 0 {
		t.Error("the weight-1 endpoint fell out of the cycle")
	}
	if r := float64(counts[0]) / float64(counts[1]); math.Abs(r-3) > .01 {
		t.Errorf("ratio of the two heavy endpoints = %.3f, want 3", r)
	}
}

// TestConcurrentPickDoneAndUpdate runs pickers on several goroutines while the endpoint set
// changes under them; run it with -race. Every pick must be an endpoint of some set that was
// current, and in-flight counts must return to zero.
func TestConcurrentPickDoneAndUpdate(t *testing.T) {
	for _, b := range []interface {
		Balancer
		Stats() []EndpointStats
	}{NewP2C(Options{}), NewRoundRobin()} {
		t.Run(fmt.Sprintf("%T stays consistent", b), func(t *testing.T) {
			sets := [][]discovery.Endpoint{endpoints(1, 1, 1), endpoints(1, 2), endpoints(3, 1, 1, 1, 1, 1)}
			b.Update(sets[0])
			var stop atomic.Bool
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for range 8 {
				wg.Go(func() {
					for !stop.Load() {
						p, err := b.Pick()
						if err != nil {
							errs <- err
							return
						}
						if a := p.Endpoint.Addr.Addr().As4(); a[3] < 1 || a[3] > 6 {
							errs <- fmt.Errorf("picked %v, in no set", p.Endpoint.Addr)
							return
						}
						p.Done(nil, time.Duration(a3(p))*time.Microsecond)
					}
				})
			}
			for i := range 2000 {
				b.Update(sets[i%len(sets)])
			}
			stop.Store(true)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			b.Update(sets[2])
			for _, s := range b.Stats() {
				if s.InFlight != 0 {
					t.Errorf("%v: %d in flight after every pick finished", s.Endpoint.Addr, s.InFlight)
				}
			}
		})
	}
}

func a3(p Pick) int { return int(p.Endpoint.Addr.Addr().As4()[3]) }

func BenchmarkP2CPickDone(b *testing.B) {
	bal := NewP2C(Options{})
	bal.Update(endpoints(1, 1, 1, 1, 1, 1, 1, 1))
	b.ReportAllocs()
	for b.Loop() {
		p, _ := bal.Pick()
		p.Done(nil, time.Millisecond)
	}
}

// BenchmarkP2CPickRelease is Pick plus a Done without a latency sample: the cost without the
// clock read that a sample needs.
func BenchmarkP2CPickRelease(b *testing.B) {
	bal := NewP2C(Options{})
	bal.Update(endpoints(1, 1, 1, 1, 1, 1, 1, 1))
	b.ReportAllocs()
	for b.Loop() {
		p, _ := bal.Pick()
		p.Done(nil, 0)
	}
}

func BenchmarkP2CPickDoneParallel(b *testing.B) {
	bal := NewP2C(Options{})
	bal.Update(endpoints(1, 1, 1, 1, 1, 1, 1, 1))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, _ := bal.Pick()
			p.Done(nil, time.Millisecond)
		}
	})
}

func BenchmarkRoundRobinPickDone(b *testing.B) {
	bal := NewRoundRobin()
	bal.Update(endpoints(1, 2, 3, 1, 1, 1, 1, 1))
	b.ReportAllocs()
	for b.Loop() {
		p, _ := bal.Pick()
		p.Done(nil, time.Millisecond)
	}
}

// TestP2CUnsampledPeersShareABurstEvenly: in a burst over fresh endpoints, the first to answer
// must not draw the rest of the burst just because its sample beats a guessed default.
func TestP2CUnsampledPeersShareABurstEvenly(t *testing.T) {
	clock := newFakeClock()
	b := NewP2C(Options{Now: clock.Now})
	b.Update(endpoints(1, 1, 1))
	counts := map[netip.AddrPort]int{}
	var held []Pick
	for i := range 99 {
		p, err := b.Pick()
		if err != nil {
			t.Fatal(err)
		}
		counts[p.Endpoint.Addr]++
		if i == 5 {
			p.Done(nil, 100*time.Microsecond) // one fast answer early in the burst
			continue
		}
		held = append(held, p)
	}
	for _, p := range held {
		p.Done(nil, time.Millisecond)
	}
	for i := 1; i <= 3; i++ {
		if n := counts[addr(i)]; n < 28 || n > 38 {
			t.Errorf("endpoint %d got %d of 99 picks, want about 33: %v", i, n, counts)
		}
	}
}
