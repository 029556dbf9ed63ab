package balance

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

var errDown = errors.New("down")

// pickCounts makes n picks, each answered at once by ok(addr), and counts them per address.
func pickCounts(t *testing.T, b Balancer, n int, ok func(netip.AddrPort) bool) map[netip.AddrPort]int {
	t.Helper()
	counts := map[netip.AddrPort]int{}
	for range n {
		p, err := b.Pick()
		if err != nil {
			t.Fatal(err)
		}
		counts[p.Endpoint.Addr]++
		p.DoneWith(time.Millisecond, !ok(p.Endpoint.Addr))
	}
	return counts
}

func stateOf(b Balancer, a netip.AddrPort) EndpointStats {
	for _, s := range b.Stats() {
		if s.Endpoint.Addr == a {
			return s
		}
	}
	return EndpointStats{}
}

// TestAccrualStateMachine walks one endpoint through up, ejected, probing, ejected again for
// twice as long, and up, on a fake clock. Round robin, so that the endpoint keeps its turns
// until accrual ejects it (P2C's failure penalty alone would starve it first); P2C is ejected
// in the test after.
func TestAccrualStateMachine(t *testing.T) {
	for _, kind := range []string{"round-robin", "p2c"} {
		t.Run(kind, func(t *testing.T) {
			clock := newFakeClock()
			opts := Options{Now: clock.Now, Accrual: Accrual{ConsecutiveFailures: 5, BaseEjection: time.Second, MaxEjection: 8 * time.Second}}
			var b Balancer = NewRoundRobinWith(opts)
			if kind == "p2c" {
				b = NewP2C(opts)
			}
			b.Update(endpoints(1, 1, 1))
			bad := addr(1)
			failing := true
			ok := func(a netip.AddrPort) bool { return a != bad || !failing }

			if kind == "p2c" {
				b.Eject(bad)
			} else {
				counts := pickCounts(t, b, 300, ok)
				if st := stateOf(b, bad); st.State != StateEjected {
					t.Fatalf("after failing %d times the endpoint is %q, want ejected", counts[bad], st.State)
				}
				if counts[bad] != 5 {
					t.Errorf("the failing endpoint took %d requests, want exactly 5 before its ejection", counts[bad])
				}
			}
			if c := pickCounts(t, b, 100, ok); c[bad] != 0 {
				t.Fatalf("an ejected endpoint got %d picks", c[bad])
			}
			// The ejection ends after about a second (±10 %): the next pick there is the probe.
			clock.Advance(1100 * time.Millisecond)
			c := pickCounts(t, b, 100, ok)
			if c[bad] != 1 {
				t.Fatalf("after its ejection ended the endpoint got %d picks, want one probe", c[bad])
			}
			st := stateOf(b, bad)
			if st.State != StateEjected || time.Until(st.EjectedUntil) < 1500*time.Millisecond {
				t.Fatalf("a failed probe: state %q until %v from now, want ejected for about 2 s", st.State, time.Until(st.EjectedUntil))
			}
			clock.Advance(1500 * time.Millisecond)
			if c := pickCounts(t, b, 50, ok); c[bad] != 0 {
				t.Fatalf("the second ejection (2 s) was not kept: %d picks after 1.5 s", c[bad])
			}
			failing = false
			clock.Advance(time.Second)
			// P2C gives it its share back as the failed probe's latency penalty decays.
			if c := pickCounts(t, b, 300, ok); c[bad] < 50 && kind == "round-robin" || c[bad] == 0 {
				t.Fatalf("a recovered endpoint got %d of 300 picks, want its share back", c[bad])
			}
			if st := stateOf(b, bad); st.State != StateUp || st.Ejections != 2 {
				t.Fatalf("after a good probe: state %q, %d ejections; want up after 2", st.State, st.Ejections)
			}
		})
	}
}

// TestPanicModeKeepsPicking: with every endpoint ejected, picks go on over all of them.
func TestPanicModeKeepsPicking(t *testing.T) {
	clock := newFakeClock()
	b := NewP2C(Options{Now: clock.Now})
	b.Update(endpoints(1, 1, 1))
	for i := 1; i <= 3; i++ {
		b.Eject(addr(i))
	}
	for _, s := range b.Stats() {
		if s.State != StateEjected {
			t.Fatalf("%v: %q after Eject", s.Endpoint.Addr, s.State)
		}
	}
	c := pickCounts(t, b, 300, func(netip.AddrPort) bool { return true })
	if len(c) != 3 {
		t.Fatalf("panic mode picked %v, want all three endpoints", c)
	}
}

// TestEjectIsAtOnceAndPickOtherAvoids: a dial failure's Eject takes effect for the next pick,
// and PickOther never returns the address it avoids while another endpoint is left.
func TestEjectIsAtOnceAndPickOtherAvoids(t *testing.T) {
	clock := newFakeClock()
	for _, b := range []Balancer{NewP2C(Options{Now: clock.Now}), NewRoundRobinWith(Options{Now: clock.Now})} {
		b.Update(endpoints(1, 1, 1))
		b.Eject(addr(2))
		if c := pickCounts(t, b, 200, func(netip.AddrPort) bool { return true }); c[addr(2)] != 0 {
			t.Fatalf("%T: an endpoint ejected by a dial failure got %d picks", b, c[addr(2)])
		}
		for range 100 {
			p, _ := b.PickOther(addr(1))
			if p.Endpoint.Addr == addr(1) || p.Endpoint.Addr == addr(2) {
				t.Fatalf("%T: PickOther(%v) with %v ejected returned %v", b, addr(1), addr(2), p.Endpoint.Addr)
			}
			p.Done(nil, time.Millisecond)
		}
		b.Update(endpoints(1))
		p, _ := b.PickOther(addr(1))
		if p.Endpoint.Addr != addr(1) {
			t.Fatalf("%T: the only endpoint must still be picked", b)
		}
		p.Done(nil, 0)
	}
}

// TestFailureRateEjects: failures spread among successes eject by rate, not by count.
func TestFailureRateEjects(t *testing.T) {
	clock := newFakeClock()
	b := NewRoundRobinWith(Options{Now: clock.Now, Accrual: Accrual{ConsecutiveFailures: -1, FailureRate: 0.4, MinRequests: 10}})
	b.Update(endpoints(1, 1))
	i := 0
	pickCounts(t, b, 100, func(a netip.AddrPort) bool {
		if a != addr(1) {
			return true
		}
		i++
		return i%2 == 0 // every other call fails: never 5 in a row, but half of them
	})
	if st := stateOf(b, addr(1)); st.State != StateEjected {
		t.Fatalf("an endpoint failing half its calls is %q, want ejected by rate", st.State)
	}
	if st := stateOf(b, addr(2)); st.State != StateUp {
		t.Fatalf("its healthy peer is %q", st.State)
	}
}

// TestSlowPathIsTheExceptionOnly: no endpoint ejected, Pick and Done still allocate nothing.
func TestPickDoneAllocatesNothing(t *testing.T) {
	b := NewP2C(Options{})
	b.Update(endpoints(1, 1, 1))
	b.Eject(addr(3))
	if n := testing.AllocsPerRun(1000, func() {
		p, _ := b.Pick()
		p.Done(nil, time.Millisecond)
		p, _ = b.PickOther(addr(1))
		p.Done(errDown, time.Millisecond)
	}); n != 0 {
		t.Fatalf("Pick/PickOther/Done allocate %v times", n)
	}
}

// TestP2CFailurePenaltyIsForgottenOnRecovery: a failure's penalty keeps P2C away from an
// endpoint for FailurePenaltyFor only; then the endpoint is tried again, and once it succeeds it
// takes its share back at once (not a minute later, when the penalty would have decayed).
func TestP2CFailurePenaltyIsForgottenOnRecovery(t *testing.T) {
	clock := newFakeClock()
	b := NewP2C(Options{Now: clock.Now, Accrual: Accrual{ConsecutiveFailures: -1}})
	b.Update(endpoints(1, 1, 1))
	failing := true
	run := func(n int) map[netip.AddrPort]int {
		c := map[netip.AddrPort]int{}
		for range n {
			p, _ := b.Pick()
			c[p.Endpoint.Addr]++
			clock.Advance(time.Millisecond)
			p.DoneWith(time.Millisecond, failing && p.Endpoint.Addr == addr(3))
		}
		return c
	}
	// 2 s of a failing endpoint: tried about once per 250 ms, not a third of the time.
	if c := run(2000); c[addr(3)] > 20 || c[addr(3)] < 4 {
		t.Fatalf("a failing endpoint got %d of 2000 picks in 2 s, want a few (one per penalty period)", c[addr(3)])
	}
	failing = false
	clock.Advance(300 * time.Millisecond)
	if c := run(3000); c[addr(3)] < 800 {
		t.Fatalf("a recovered endpoint got %d of 3000 picks, want its share back", c[addr(3)])
	}
}
