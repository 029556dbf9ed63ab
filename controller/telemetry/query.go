package telemetry

import (
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// Resource kinds a query groups by, as detour stat spells them.
const (
	KindService    = "svc"
	KindPod        = "pod"
	KindDeployment = "deploy"
)

// Resource is a kind and an optional name ("" matches every one): "deploy/web", "svc".
type Resource struct{ Kind, Name string }

// ParseResource reads KIND[/NAME], with the aliases kubectl accepts.
func ParseResource(s string) (Resource, error) {
	kind, name, _ := strings.Cut(s, "/")
	switch strings.ToLower(kind) {
	case "svc", "service", "services":
		kind = KindService
	case "po", "pod", "pods":
		kind = KindPod
	case "deploy", "deployment", "deployments":
		kind = KindDeployment
	default:
		return Resource{}, fmt.Errorf("resource %q: want svc, pod or deploy, optionally /NAME", s)
	}
	return Resource{kind, name}, nil
}

func (r Resource) String() string {
	if r.Name == "" {
		return r.Kind
	}
	return r.Kind + "/" + r.Name
}

// Query selects what Stat reports.
type Query struct {
	Resource Resource // rows: one per resource of this kind (of this name, if given)
	// From and To keep only traffic from / to these (Kind "" for none). With either, the rows
	// come from the callers' outbound side; without, services are seen from their callers and
	// pods and deployments from their own inbound side.
	From, To Resource
	Window   time.Duration // default 1 minute, at most Window
}

// Figures are the request figures of one row.
type Figures struct {
	Requests    uint64   `json:"requests"`
	Failures    uint64   `json:"failures"`
	RPS         float64  `json:"rps"`
	SuccessRate *float64 `json:"success_rate"` // null without requests
	P50         *float64 `json:"p50_ms"`
	P95         *float64 `json:"p95_ms"`
	P99         *float64 `json:"p99_ms"`
	MTLSShare   *float64 `json:"mtls_share"` // of requests, mutual TLS
}

// Row is one resource's figures; a service's Replicas are per serving pod.
type Row struct {
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
	Figures
	Replicas []Row `json:"replicas,omitempty"`
}

// Stat is a query's answer.
type Stat struct {
	Window string    `json:"window"`
	At     time.Time `json:"at"`
	Rows   []Row     `json:"rows"`
}

// acc accumulates slots.
type acc struct {
	requests, failures, tls uint64
	latency                 [nBuckets]uint64
	start, end              time.Time
}

func (a *acc) add(b *acc) {
	a.requests += b.requests
	a.failures += b.failures
	a.tls += b.tls
	for i := range a.latency {
		a.latency[i] += b.latency[i]
	}
	if b.start.IsZero() { // a row with nothing counted
		return
	}
	if a.start.IsZero() || b.start.Before(a.start) {
		a.start = b.start
	}
	if b.end.After(a.end) {
		a.end = b.end
	}
}

func (a *acc) figures() Figures {
	f := Figures{Requests: a.requests, Failures: a.failures}
	if d := a.end.Sub(a.start).Seconds(); d > 0 {
		f.RPS = math.Round(float64(a.requests)/d*100) / 100
	}
	if a.requests == 0 {
		return f
	}
	ratio := func(n uint64) *float64 { v := math.Round(float64(n)/float64(a.requests)*10000) / 10000; return &v }
	f.SuccessRate = ratio(a.requests - a.failures)
	f.MTLSShare = ratio(a.tls)
	q := func(q float64) *float64 {
		v := math.Round(Quantile(q, a.latency[:])*1e6) / 1e3 // ms, µs precision
		return &v
	}
	f.P50, f.P95, f.P99 = q(.5), q(.95), q(.99)
	return f
}

// Quantile is the q-quantile (0..1), in seconds, of requests counted per bucket of Bounds (the
// last count the overflow), interpolated within its bucket as Prometheus's histogram_quantile
// does; NaN without requests.
func Quantile(q float64, latency []uint64) float64 {
	var total uint64
	for _, c := range latency {
		total += c
	}
	if total == 0 {
		return math.NaN()
	}
	rank := q * float64(total)
	var seen float64
	for i, c := range latency {
		if c > 0 && seen+float64(c) >= rank {
			if i >= len(Bounds) {
				return Bounds[len(Bounds)-1]
			}
			lo := 0.0
			if i > 0 {
				lo = Bounds[i-1]
			}
			return lo + (Bounds[i]-lo)*(rank-seen)/float64(c)
		}
		seen += float64(c)
	}
	return Bounds[len(Bounds)-1]
}

func window(w time.Duration) time.Duration {
	if w <= 0 {
		return time.Minute
	}
	return min(w, Window)
}

// sumLocked adds the slots of se that overlap the window ending at end. The oldest of them
// may begin before the window: the rates divide by the time the slots cover (from the oldest
// slot's start, or the series' first report if later), so a window of w covers w to w plus
// one Resolution, and every rate is true to the requests counted.
func (s *Store) sumLocked(k seriesKey, se *series, end time.Time, w time.Duration) acc {
	var a acc
	res := int64(Resolution / time.Second)
	last := uint32(end.Unix() / res)
	oldest := uint32(end.Add(-w).Unix() / res)
	for i := range se.slots {
		sl := &se.slots[i]
		if sl.epoch == 0 || sl.epoch > last || sl.epoch < oldest {
			continue
		}
		a.requests += uint64(sl.requests)
		a.failures += uint64(sl.failures)
		for j, c := range sl.latency {
			a.latency[j] += uint64(c)
		}
	}
	if k.peer != "" {
		a.tls = a.requests
	}
	a.end = end
	a.start = time.Unix(int64(oldest)*res, 0)
	if se.first.After(a.start) {
		a.start = se.first
	}
	return a
}

// endLocked is when a series' figures are as of: its pod's last report, while the pod reports
// (so a rate does not fall between two reports), else now.
func (s *Store) endLocked(k seriesKey, now time.Time) time.Time {
	if p := s.proxies[k.pod]; p != nil && !p.last.After(now) && now.Sub(p.last) < 2*Resolution {
		return p.last
	}
	return now
}

// owner is the pod serving an endpoint address, or "" if no proxy reported it.
func (s *Store) ownerLocked(endpoint string) (Pod, bool) {
	ap, err := netip.ParseAddrPort(endpoint)
	if err != nil {
		return Pod{}, false
	}
	p, ok := s.owners[ap.Addr().Unmap()]
	return p, ok
}

// name is what a resource of kind is called for a pod.
func name(kind string, p Pod) string {
	if kind == KindDeployment {
		return Workload(p.Name)
	}
	return p.Name
}

func matchPod(r Resource, p Pod) bool {
	if r.Name == "" {
		return true
	}
	n := name(r.Kind, p)
	return r.Name == n || r.Name == p.Namespace+"/"+n
}

// matchService says whether a service resource names authority (its name, its name with the
// namespace, or any authority that starts with it followed by '.' or ':').
func matchService(r Resource, authority string) bool {
	if r.Name == "" || r.Name == authority {
		return true
	}
	rest, ok := strings.CutPrefix(authority, r.Name)
	return ok && (rest[0] == '.' || rest[0] == ':')
}

// dest is the destination of an outbound series as a resource of kind; ok is false when it
// cannot be told (a pod no proxy reported).
func (s *Store) destLocked(kind string, k seriesKey) (row Row, ok bool) {
	if kind == KindService {
		return Row{Kind: kind, Name: k.authority}, true
	}
	p, found := s.ownerLocked(k.endpoint)
	if !found {
		return Row{Kind: kind, Name: k.endpoint}, kind == KindPod
	}
	return Row{Kind: kind, Name: name(kind, p), Namespace: p.Namespace}, true
}

func matchDest(r Resource, s *Store, k seriesKey) bool {
	if r.Kind == KindService {
		return matchService(r, k.authority)
	}
	p, found := s.ownerLocked(k.endpoint)
	return found && matchPod(r, p)
}

// Stat answers q at the store's current time.
func (s *Store) Stat(q Query) (Stat, error) {
	w := window(q.Window)
	if q.Resource.Kind == "" {
		return Stat{}, fmt.Errorf("no resource kind: want svc, pod or deploy")
	}
	if q.To.Kind != "" && q.From.Kind == "" && q.Resource.Kind == KindService {
		return Stat{}, fmt.Errorf("--to %s with svc: services are destinations; stat pod or deploy --to %s shows their callers", q.To, q.To)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	type group struct {
		row      Row
		a        acc
		replicas map[string]*group
	}
	groups := map[string]*group{}
	get := func(m map[string]*group, r Row) *group {
		id := r.Namespace + "/" + r.Name
		g := m[id]
		if g == nil {
			g = &group{row: r, replicas: map[string]*group{}}
			m[id] = g
		}
		return g
	}
	outbound := q.From.Kind != "" || q.To.Kind != "" || q.Resource.Kind == KindService
	if !outbound {
		// Every reporting pod is listed, busy or not.
		for pod := range s.proxies {
			r := Row{Kind: q.Resource.Kind, Name: name(q.Resource.Kind, pod), Namespace: pod.Namespace}
			if matchPod(q.Resource, pod) {
				g := get(groups, r)
				g.a.add(&acc{})
			}
		}
	}
	for k, se := range s.series {
		end := s.endLocked(k, now)
		if now.Sub(se.last) > w+Resolution {
			continue
		}
		var r Row
		switch {
		case outbound:
			if k.inbound || (q.From.Kind != "" && !matchPod(q.From, k.pod)) || (q.To.Kind != "" && !matchDest(q.To, s, k)) {
				continue
			}
			if q.From.Kind != "" || q.Resource.Kind == KindService {
				var ok bool
				if r, ok = s.destLocked(q.Resource.Kind, k); !ok {
					continue
				}
				if q.Resource.Kind == KindService && !matchService(q.Resource, r.Name) {
					continue
				}
				if q.Resource.Kind != KindService && !matchDest(q.Resource, s, k) && q.Resource.Name != "" {
					continue
				}
			} else { // --to alone: the callers
				if !matchPod(q.Resource, k.pod) {
					continue
				}
				r = Row{Kind: q.Resource.Kind, Name: name(q.Resource.Kind, k.pod), Namespace: k.pod.Namespace}
			}
		default:
			if !k.inbound || !matchPod(q.Resource, k.pod) {
				continue
			}
			r = Row{Kind: q.Resource.Kind, Name: name(q.Resource.Kind, k.pod), Namespace: k.pod.Namespace}
		}
		a := s.sumLocked(k, se, end, w)
		g := get(groups, r)
		g.a.add(&a)
		if q.Resource.Kind == KindService {
			rep, ok := s.destLocked(KindPod, k)
			if ok {
				get(g.replicas, rep).a.add(&a)
			}
		}
	}
	out := Stat{Window: w.String(), At: now, Rows: []Row{}}
	for _, g := range groups {
		r := g.row
		r.Figures = g.a.figures()
		for _, rg := range g.replicas {
			rr := rg.row
			rr.Figures = rg.a.figures()
			r.Replicas = append(r.Replicas, rr)
		}
		sortRows(r.Replicas)
		out.Rows = append(out.Rows, r)
	}
	sortRows(out.Rows)
	return out, nil
}

func sortRows(rows []Row) {
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Namespace != rows[j].Namespace {
			return rows[i].Namespace < rows[j].Namespace
		}
		return rows[i].Name < rows[j].Name
	})
}

// Route is one busy route of Top: a caller pod to a service's replica.
type Route struct {
	From      string `json:"from"` // namespace/pod
	Authority string `json:"authority"`
	To        string `json:"to"` // the serving pod, or the endpoint's address
	Figures
}

// Top returns the busiest routes over the window, most requests first, at most limit.
func (s *Store) Top(w time.Duration, limit int) []Route {
	w = window(w)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	accs := map[[3]string]*acc{}
	for k, se := range s.series {
		if k.inbound || now.Sub(se.last) > w+Resolution {
			continue
		}
		to := k.endpoint
		if p, ok := s.ownerLocked(k.endpoint); ok {
			to = p.String()
		}
		id := [3]string{k.pod.String(), k.authority, to}
		a := s.sumLocked(k, se, s.endLocked(k, now), w)
		if accs[id] == nil {
			accs[id] = &acc{}
		}
		accs[id].add(&a)
	}
	routes := []Route{}
	for id, a := range accs {
		if a.requests > 0 {
			routes = append(routes, Route{From: id[0], Authority: id[1], To: id[2], Figures: a.figures()})
		}
	}
	sort.Slice(routes, func(i, j int) bool {
		if routes[i].Requests != routes[j].Requests {
			return routes[i].Requests > routes[j].Requests
		}
		return routes[i].From+routes[i].To < routes[j].From+routes[j].To
	})
	if limit > 0 && len(routes) > limit {
		routes = routes[:limit]
	}
	return routes
}

// Point is one slot of a Timeline.
type Point struct {
	T time.Time `json:"t"`
	Figures
}

// Timeline is a resource's figures per slot over the whole window, oldest first: services as
// their callers see them, pods and deployments as they served.
func (s *Store) Timeline(r Resource) []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	res := int64(Resolution / time.Second)
	last := uint32(now.Unix() / res)
	var slots [Slots]acc
	for k, se := range s.series {
		if now.Sub(se.last) > Window+Resolution {
			continue
		}
		if r.Kind == KindService {
			if k.inbound || !matchService(r, k.authority) {
				continue
			}
		} else if !k.inbound || !matchPod(r, k.pod) {
			continue
		}
		for i := range se.slots {
			sl := &se.slots[i]
			if sl.epoch == 0 || sl.epoch > last || last-sl.epoch >= Slots {
				continue
			}
			a := &slots[Slots-1-(last-sl.epoch)]
			a.requests += uint64(sl.requests)
			a.failures += uint64(sl.failures)
			if k.peer != "" {
				a.tls += uint64(sl.requests)
			}
			for j, c := range sl.latency {
				a.latency[j] += uint64(c)
			}
		}
	}
	points := make([]Point, Slots)
	for i := range slots {
		start := time.Unix(int64(last-uint32(Slots-1-i))*res, 0).UTC()
		slots[i].start, slots[i].end = start, start.Add(Resolution)
		if i == Slots-1 && now.Before(slots[i].end) {
			slots[i].end = now // the slot in progress
		}
		points[i] = Point{T: start, Figures: slots[i].figures()}
	}
	return points
}

// Edge is one arrow of the service graph: a caller workload to a service, or a service to a
// workload serving it.
type Edge struct {
	From string `json:"from"` // "deploy/ns/name" or "svc/authority"
	To   string `json:"to"`
	Figures
}

// Graph is who calls whom over the window.
type Graph struct {
	Nodes []string `json:"nodes"`
	Edges []Edge   `json:"edges"`
}

// Graph returns the service graph over window w.
func (s *Store) Graph(w time.Duration) Graph {
	w = window(w)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	nodes := map[string]bool{}
	edges := map[[2]string]*acc{}
	add := func(from, to string, a *acc) {
		nodes[from], nodes[to] = true, true
		e := edges[[2]string{from, to}]
		if e == nil {
			e = &acc{}
			edges[[2]string{from, to}] = e
		}
		e.add(a)
	}
	for pod := range s.proxies {
		nodes["deploy/"+pod.Namespace+"/"+Workload(pod.Name)] = true
	}
	for k, se := range s.series {
		if k.inbound || now.Sub(se.last) > w+Resolution {
			continue
		}
		a := s.sumLocked(k, se, s.endLocked(k, now), w)
		if a.requests == 0 {
			continue
		}
		svc := "svc/" + k.authority
		add("deploy/"+k.pod.Namespace+"/"+Workload(k.pod.Name), svc, &a)
		if p, ok := s.ownerLocked(k.endpoint); ok {
			add(svc, "deploy/"+p.Namespace+"/"+Workload(p.Name), &a)
		}
	}
	g := Graph{Nodes: []string{}, Edges: []Edge{}}
	for n := range nodes {
		g.Nodes = append(g.Nodes, n)
	}
	sort.Strings(g.Nodes)
	for k, a := range edges {
		g.Edges = append(g.Edges, Edge{From: k[0], To: k[1], Figures: a.figures()})
	}
	sort.Slice(g.Edges, func(i, j int) bool {
		return g.Edges[i].From+" "+g.Edges[i].To < g.Edges[j].From+" "+g.Edges[j].To
	})
	return g
}
