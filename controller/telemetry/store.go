// Package telemetry is the controller's collector of what the proxies forward: it serves
// Telemetry.Report (api/telemetrypb), where every proxy pushes a summary of its requests each
// interval on the connection it holds for discovery, and keeps a rolling window of them (10
// minutes at 10 s resolution) in bounded memory, for detour stat and the dashboard
// (controller/dashboard) to query.
//
// Memory is bounded by the series count: a series is one reporting pod, direction, authority,
// endpoint and peer identity (the labels of detour_requests_total), and costs a fixed ring of
// Slots slots. Past the cap (NewStore's maxSeries, the controller's --telemetry-max-series) new
// series are refused, counted in detour_telemetry_series_dropped_total, until old ones expire a
// window after their last request; BenchmarkCollectorMemory holds the store at its bound.
package telemetry

import (
	"math"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"
)

const (
	// Resolution is the length of one slot of the rolling window.
	Resolution = 10 * time.Second
	// Slots is the window's length in slots: 10 minutes.
	Slots = 60
	// Window is the longest span a query covers.
	Window = Resolution * Slots
	// DefaultMaxSeries bounds the series held: at most 48 MiB with the longest labels a
	// report may carry (BenchmarkCollectorMemory).
	DefaultMaxSeries = 8000
)

// Bounds are the upper bounds, in seconds, of the latency buckets the store keeps (the proxy's
// detour_response_latency_seconds buckets); a reported bucket is added to the first of these
// at or above its bound, so proxies with other buckets are still summed, a little coarser.
var Bounds = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

const nBuckets = 15 // len(Bounds) + the overflow

// slot is one Resolution of one series. 72 bytes: the ring of 60 is 4,320.
type slot struct {
	epoch              uint32 // Unix time / Resolution of the slot; 0: empty
	requests, failures uint32
	latency            [nBuckets]uint32
}

type series struct {
	first, last time.Time // first and last report that counted requests
	slots       [Slots]slot
}

// Pod names a reporting proxy's pod.
type Pod struct{ Namespace, Name string }

func (p Pod) String() string {
	if p.Namespace == "" {
		return p.Name
	}
	return p.Namespace + "/" + p.Name
}

type seriesKey struct {
	pod       Pod
	inbound   bool
	authority string
	endpoint  string
	peer      string
}

// proxyInfo is what the store knows of one reporting proxy.
type proxyInfo struct {
	identity  string
	addresses []netip.Addr
	last      time.Time // last report
	streams   int       // open report streams
}

// Store is the rolling window. It is safe for concurrent use.
type Store struct {
	maxSeries int
	now       func() time.Time

	mu      sync.Mutex
	series  map[seriesKey]*series
	proxies map[Pod]*proxyInfo
	owners  map[netip.Addr]Pod // pod address -> the pod that reported it
	dropped uint64             // series refused at the cap
	swept   time.Time          // the last expiry sweep
	reports uint64
}

// NewStore returns an empty store holding at most maxSeries series (DefaultMaxSeries if < 1).
// now is the clock (time.Now if nil).
func NewStore(maxSeries int, now func() time.Time) *Store {
	if maxSeries < 1 {
		maxSeries = DefaultMaxSeries
	}
	if now == nil {
		now = time.Now
	}
	return &Store{maxSeries: maxSeries, now: now, series: map[seriesKey]*series{},
		proxies: map[Pod]*proxyInfo{}, owners: map[netip.Addr]Pod{}}
}

// RouteCounts is one route's growth in one report, as the store takes it.
type RouteCounts struct {
	Inbound                   bool
	Authority, Endpoint, Peer string
	Requests, Failures        uint64
	Latency                   []uint64 // per bucket of the report's bounds, the last the overflow
}

// bucketMap maps a report's bucket index to the store's.
func bucketMap(bounds []float64) []int {
	m := make([]int, len(bounds)+1)
	for i, b := range bounds {
		j := sort.SearchFloat64s(Bounds, b-1e-12)
		m[i] = min(j, nBuckets-1)
	}
	m[len(bounds)] = nBuckets - 1
	return m
}

// Hello records a proxy that opened a report stream: its identity and addresses.
func (s *Store) Hello(pod Pod, identity string, addrs []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proxies[pod]
	if p == nil {
		p = &proxyInfo{}
		s.proxies[pod] = p
	}
	for _, a := range p.addresses {
		if s.owners[a] == pod {
			delete(s.owners, a)
		}
	}
	p.identity, p.addresses, p.last = identity, addrs, s.now()
	p.streams++
	for _, a := range addrs {
		s.owners[a.Unmap()] = pod
	}
}

// Bye records the end of a proxy's report stream; the proxy stays listed until its last report
// leaves the window.
func (s *Store) Bye(pod Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.proxies[pod]; p != nil {
		p.streams--
	}
}

// Add records one report of pod at time at, covering the interval before it. mapping is
// bucketMap of the report's bounds.
func (s *Store) Add(pod Pod, at time.Time, interval time.Duration, mapping []int, routes []RouteCounts) {
	interval = min(max(interval, 0), Resolution)
	epoch := uint32(at.Unix() / int64(Resolution/time.Second))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reports++
	if p := s.proxies[pod]; p != nil {
		p.last = at
	}
	for _, r := range routes {
		if r.Requests == 0 {
			continue
		}
		k := seriesKey{pod, r.Inbound, r.Authority, r.Endpoint, r.Peer}
		se := s.series[k]
		if se == nil {
			if len(s.series) >= s.maxSeries {
				// At the cap, a sweep for series that left the window, at most once a slot: a
				// sweep per refused route would cost the whole store each time.
				if at.Sub(s.swept) >= Resolution {
					s.expireLocked(at)
				}
				if len(s.series) >= s.maxSeries {
					s.dropped++
					continue
				}
			}
			se = &series{first: at.Add(-interval)} // rates count from the interval's start
			// The key's own copies: the report's strings are not kept alive with it.
			k.authority, k.endpoint, k.peer = strings.Clone(k.authority), strings.Clone(k.endpoint), strings.Clone(k.peer)
			s.series[k] = se
		}
		se.last = at
		sl := &se.slots[epoch%Slots]
		if sl.epoch != epoch {
			*sl = slot{epoch: epoch}
		}
		sl.requests = sat(sl.requests, r.Requests)
		sl.failures = sat(sl.failures, min(r.Failures, r.Requests))
		for i, c := range r.Latency {
			if i < len(mapping) {
				sl.latency[mapping[i]] = sat(sl.latency[mapping[i]], c)
			}
		}
	}
}

func sat(a uint32, b uint64) uint32 { return uint32(min(uint64(a)+b, math.MaxUint32)) }

// Expire drops the series and proxies whose last report is older than the window.
func (s *Store) Expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
}

func (s *Store) expireLocked(now time.Time) {
	s.swept = now
	for k, se := range s.series {
		if now.Sub(se.last) > Window {
			delete(s.series, k)
		}
	}
	for pod, p := range s.proxies {
		if p.streams <= 0 && now.Sub(p.last) > Window {
			for _, a := range p.addresses {
				if s.owners[a] == pod {
					delete(s.owners, a)
				}
			}
			delete(s.proxies, pod)
		}
	}
}

// Stats are the store's own figures (its /metrics).
type Stats struct {
	Series, Proxies  int
	Dropped, Reports uint64
}

// Stats reports the store's size and counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Series: len(s.series), Proxies: len(s.proxies), Dropped: s.dropped, Reports: s.reports}
}

// Workload is the workload a pod belongs to, from its name: a Deployment's pod
// (name-<replicaset hash>-<5 characters>) or a StatefulSet's or the demo's (name-<ordinal>)
// drops its suffixes; any other name is its own workload.
func Workload(pod string) string {
	parts := strings.Split(pod, "-")
	n := len(parts)
	switch {
	case n >= 3 && len(parts[n-1]) == 5 && alnum(parts[n-1]) && len(parts[n-2]) >= 5 && len(parts[n-2]) <= 10 && alnum(parts[n-2]):
		return strings.Join(parts[:n-2], "-")
	case n >= 2 && digits(parts[n-1]):
		return strings.Join(parts[:n-1], "-")
	}
	return pod
}

func alnum(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

func digits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
