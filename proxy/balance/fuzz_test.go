package balance

import (
	"errors"
	"testing"
	"time"

	"github.com/detourmesh/detour/discovery"
)

// FuzzBalancer drives both balancers with an arbitrary sequence of updates, picks and
// completions, and checks what must hold whatever the sequence: Pick fails only when the set
// is empty, every pick is an endpoint of the set in force, in-flight counts never go negative
// and return to zero when every pick is done, and Pick never panics.
//
// Each input byte is one operation: the top two bits choose it, the rest are its argument.
func FuzzBalancer(f *testing.F) {
	f.Add([]byte{0x07, 0x40, 0x40, 0x81, 0xc2, 0x40, 0x01, 0x80})
	f.Add([]byte{0x3f, 0x40, 0x40, 0x40, 0x00, 0x40, 0xff, 0xbf})
	f.Add([]byte{0x00, 0x40, 0x15, 0x40, 0x40, 0x2a, 0x80, 0x80, 0xc0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		clock := newFakeClock()
		for _, b := range []interface {
			Balancer
			Stats() []EndpointStats
		}{NewP2C(Options{Now: clock.Now}), NewRoundRobin()} {
			var current []discovery.Endpoint
			var open []Pick
			for _, op := range ops {
				arg := op & 0x3f
				switch op >> 6 {
				case 0: // Update to the subset of 6 addresses named by the bits of arg.
					current = current[:0:0]
					for i := range 6 {
						if arg&(1<<i) != 0 {
							current = append(current, discovery.Endpoint{Addr: addr(i + 1), Weight: uint32(arg) + uint32(i)})
						}
					}
					b.Update(current)
				case 1: // Pick.
					p, err := b.Pick()
					if len(current) == 0 {
						if !errors.Is(err, ErrNoEndpoints) {
							t.Fatalf("Pick with no endpoints = %v", err)
						}
						continue
					}
					if err != nil {
						t.Fatalf("Pick: %v", err)
					}
					found := false
					for _, ep := range current {
						found = found || ep.Equal(p.Endpoint)
					}
					if !found {
						t.Fatalf("picked %+v, not in %+v", *p.Endpoint, current)
					}
					open = append(open, p)
				case 2: // Finish the oldest open pick after arg*100µs, failing when arg is odd.
					clock.Advance(time.Duration(arg) * 100 * time.Microsecond)
					if len(open) > 0 {
						var err error
						if arg&1 == 1 {
							err = errors.New("reset")
						}
						open[0].Done(err, time.Duration(arg)*time.Millisecond)
						open = open[1:]
					}
				case 3: // Let time pass: up to 63 × 2^arg%32 ms.
					clock.Advance(time.Duration(arg) << (arg % 32) * time.Millisecond)
				}
				for _, s := range b.Stats() {
					if s.InFlight < 0 {
						t.Fatalf("%v has %d in flight", s.Endpoint.Addr, s.InFlight)
					}
				}
			}
			for _, p := range open {
				p.Done(nil, time.Millisecond)
			}
			for _, s := range b.Stats() {
				if s.InFlight != 0 {
					t.Fatalf("%v has %d in flight after every pick finished", s.Endpoint.Addr, s.InFlight)
				}
				if s.RTT < 0 {
					t.Fatalf("%v has a negative latency estimate %v", s.Endpoint.Addr, s.RTT)
				}
			}
		}
	})
}
