package proxy

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/proxy/balance"
	"github.com/detourmesh/detour/proxy/retry"
)

// service is a discovered service with the balancer that spreads its requests. balancer is nil
// for a service whose endpoints are not known (Unresolved): its requests fail.
type service struct {
	*discovery.Service
	balancer  balance.Balancer
	authority string // label for metrics: the service's first authority, else its name
	// budget bounds the service's retries; kept across updates while its settings stay.
	budget *retry.Budget
	// retriers are the service's route policies, then its own (resilience.go).
	retriers []retrier
}

// table is one immutable routing view: a discovery snapshot and a balancer per resolved
// service. Lookups read it through one atomic load, like a grpc-go picker.
type table struct {
	snap     *discovery.Snapshot
	services map[*discovery.Service]*service // the resolved services
	// meshed maps a meshed endpoint's address to the identity its proxy must prove; an
	// identity that does not parse maps to the zero ID, so dialling it fails closed.
	meshed map[netip.AddrPort]spiffeid.ID
	// replaced is closed when a newer table is installed: a connection waiting for a service's
	// endpoints waits on it.
	replaced chan struct{}
}

// find returns the service dst selects: resolved (with its balancer), or, when its endpoints
// are not known yet, nil and the service's entry.
func (t *table) find(dst netip.AddrPort) (*service, *discovery.Service) {
	if t == nil || t.snap == nil {
		return nil, nil
	}
	s, ok := t.snap.Lookup(dst)
	if !ok {
		return nil, nil
	}
	if svc := t.services[s]; svc != nil {
		return svc, s
	}
	return nil, s
}

func (t *table) lookup(dst netip.AddrPort) *service {
	svc, _ := t.find(dst)
	return svc
}

// routes follows discovery. Balancers live as long as their service's name, so a reload
// keeps every endpoint's latency and in-flight statistics.
type routes struct {
	current atomic.Pointer[table]
	opts    balance.Options
	// onEject is told of every ejection (metrics, log); set before the first update.
	onEject func(service string, addr netip.AddrPort, d time.Duration)
	// build finishes a fresh service (its retriers); set before the first update.
	build func(*service)

	// zone is the proxy's topology zone: balancers get discovery.ForZone's endpoints.
	zone string

	mu        sync.Mutex
	balancers map[string]kept // by service name
}

// kept is a service's balancer and budget, and the settings they were made for.
type kept struct {
	balance.Balancer
	kind    discovery.Balancer
	accrual discovery.Accrual
	budget  *retry.Budget
	bset    discovery.Budget
}

func newRoutes(opts balance.Options, zone string) *routes {
	return &routes{opts: opts, zone: zone, balancers: map[string]kept{}}
}

// update installs a new snapshot and returns the endpoints whose peer changed: meshed with
// another identity (reidentified), or meshed then and not now, or the reverse; and the resolved
// services that are new or changed since the last snapshot (fresh). Services are compared by
// pointer (a discovery.Source keeps the *Service of an unchanged service), so a snapshot that
// changes one service updates one balancer. Only resolved services get a balancer: a service
// whose endpoints are not known costs its table entry and nothing more. It is called by the one
// goroutine that follows discovery.
func (r *routes) update(snap *discovery.Snapshot) (changed, reidentified []netip.AddrPort, fresh []*discovery.Service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.current.Load()
	t := &table{snap: snap, services: map[*discovery.Service]*service{}, meshed: map[netip.AddrPort]spiffeid.ID{},
		replaced: make(chan struct{})}
	seen := map[string]bool{}
	for _, s := range snap.Services() {
		if s.Unresolved {
			continue
		}
		seen[s.Name] = true
		for _, e := range s.Endpoints {
			if e.Meshed() {
				id, _ := spiffeid.FromString(e.Identity) // the parser checked it
				t.meshed[e.Addr] = id
			}
		}
		if old != nil {
			if svc := old.services[s]; svc != nil {
				t.services[s] = svc // the same service: its balancer has these endpoints
				continue
			}
		}
		pol := s.PolicyOf()
		k, ok := r.balancers[s.Name]
		if !ok || k.kind != s.Balancer || k.accrual != pol.Accrual {
			k.Balancer, k.kind, k.accrual = balance.New(s.Balancer, r.balanceOptions(s.Name, pol)), s.Balancer, pol.Accrual
		}
		if k.budget == nil || k.bset != pol.Budget {
			k.budget, k.bset = retry.NewBudget(pol.Budget.Ratio, pol.Budget.MinPerSecond, pol.Budget.Window, r.opts.Now), pol.Budget
		}
		r.balancers[s.Name] = k
		k.Update(discovery.ForZone(s.Endpoints, r.zone))
		svc := &service{Service: s, balancer: k.Balancer, authority: authority(s), budget: k.budget}
		if r.build != nil {
			r.build(svc)
		}
		t.services[s] = svc
		fresh = append(fresh, s)
	}
	for name := range r.balancers {
		if !seen[name] {
			delete(r.balancers, name)
		}
	}
	if old != nil {
		for addr, id := range old.meshed {
			if now, ok := t.meshed[addr]; !ok || now != id {
				changed = append(changed, addr)
				if ok {
					reidentified = append(reidentified, addr)
				}
			}
		}
		for addr := range t.meshed {
			if _, ok := old.meshed[addr]; !ok {
				changed = append(changed, addr)
			}
		}
	}
	r.current.Store(t)
	if old != nil {
		close(old.replaced)
	}
	return changed, reidentified, fresh
}

// authority is a service's label in metrics: its first authority, else its name.
func authority(s *discovery.Service) string {
	if len(s.Authorities) > 0 {
		return s.Authorities[0]
	}
	return s.Name
}

func (r *routes) lookup(dst netip.AddrPort) *service { return r.current.Load().lookup(dst) }

// snapshot is the discovery snapshot in force, nil before the first.
func (r *routes) snapshot() *discovery.Snapshot {
	if t := r.current.Load(); t != nil {
		return t.snap
	}
	return nil
}

// identity says whether the endpoint at addr is meshed and, if so, who it must prove to be.
func (r *routes) identity(addr netip.AddrPort) (spiffeid.ID, bool) {
	t := r.current.Load()
	if t == nil {
		return spiffeid.ID{}, false
	}
	id, ok := t.meshed[addr]
	return id, ok
}

// endpointsDoc is /debug/endpoints: every resolved service with its endpoints and their load
// (with ?all, the unresolved ones too, marked so).
type endpointsDoc struct {
	Revision string       `json:"revision"`
	Services []serviceDoc `json:"services"`
	// Unresolved counts the services of the table whose endpoints the proxy does not follow
	// (it has not used them, or not recently).
	Unresolved int `json:"unresolved,omitempty"`
}

type serviceDoc struct {
	Name      string        `json:"name"`
	Addresses []string      `json:"addresses"`
	Protocol  string        `json:"protocol"`
	Balancer  string        `json:"balancer"`
	Endpoints []endpointDoc `json:"endpoints"`
	// Unresolved: the endpoints are not known (shown with ?all only).
	Unresolved bool `json:"unresolved,omitempty"`
	// Policy is the service's timeouts, retries, budget and accrual in force.
	Policy *policyDoc `json:"policy,omitempty"`
}

// policyDoc is a discovery.Policy as /debug/endpoints shows it: durations as Go writes them.
type policyDoc struct {
	Timeout string           `json:"timeout,omitempty"`
	Retry   *retryDoc        `json:"retry,omitempty"`
	Budget  budgetDoc        `json:"budget"`
	Accrual accrualDoc       `json:"accrual"`
	Routes  []routePolicyDoc `json:"routes,omitempty"`
}

type retryDoc struct {
	On         []string `json:"on"`
	Attempts   int      `json:"attempts"`
	Backoff    string   `json:"backoff"`
	MaxBackoff string   `json:"max_backoff"`
}

type budgetDoc struct {
	Ratio        float64 `json:"ratio"`
	MinPerSecond float64 `json:"min_per_second"`
	Window       string  `json:"window"`
	// Requests and Retries are what the budget counted over its window, now.
	Requests int64 `json:"requests"`
	Retries  int64 `json:"retries"`
}

type accrualDoc struct {
	ConsecutiveFailures int     `json:"consecutive_failures"`
	FailureRate         float64 `json:"failure_rate,omitempty"`
	Window              string  `json:"window"`
	BaseEjection        string  `json:"base_ejection"`
	MaxEjection         string  `json:"max_ejection"`
}

type routePolicyDoc struct {
	Path       string    `json:"path"`
	Method     string    `json:"method,omitempty"`
	Timeout    string    `json:"timeout,omitempty"`
	Retry      *retryDoc `json:"retry,omitempty"`
	Idempotent bool      `json:"idempotent,omitempty"`
}

func durDoc(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

func retryDocOf(r *discovery.RetryPolicy) *retryDoc {
	if r == nil {
		return nil
	}
	return &retryDoc{On: r.On.Names(), Attempts: r.Attempts, Backoff: r.Backoff.String(), MaxBackoff: r.MaxBackoff.String()}
}

func policyDocOf(p *discovery.Policy, b *retry.Budget) *policyDoc {
	d := &policyDoc{Timeout: durDoc(p.Timeout), Retry: retryDocOf(p.Retry),
		Budget: budgetDoc{Ratio: p.Budget.Ratio, MinPerSecond: p.Budget.MinPerSecond, Window: p.Budget.Window.String()},
		Accrual: accrualDoc{ConsecutiveFailures: p.Accrual.ConsecutiveFailures, FailureRate: p.Accrual.FailureRate,
			Window: p.Accrual.Window.String(), BaseEjection: p.Accrual.BaseEjection.String(), MaxEjection: p.Accrual.MaxEjection.String()}}
	if b != nil {
		d.Budget.Requests, d.Budget.Retries = b.Window()
	}
	for _, r := range p.Routes {
		d.Routes = append(d.Routes, routePolicyDoc{Path: r.PathPrefix, Method: r.Method, Timeout: durDoc(r.Timeout),
			Retry: retryDocOf(r.Retry), Idempotent: r.Idempotent})
	}
	return d
}

type endpointDoc struct {
	Address  string  `json:"address"`
	Identity string  `json:"identity,omitempty"`
	Weight   uint32  `json:"weight"`
	Zone     string  `json:"zone,omitempty"`
	InFlight int64   `json:"in_flight"`
	RTTms    float64 `json:"rtt_ms,omitempty"` // peak-EWMA estimate, p2c-ewma only
	Sampled  bool    `json:"sampled,omitempty"`
	// State is up, ejected (until EjectedUntil) or probing (failure accrual); "" for a
	// service not resolved.
	State               string     `json:"state,omitempty"`
	EjectedUntil        *time.Time `json:"ejected_until,omitempty"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	Ejections           int64      `json:"ejections"`
}

func (r *routes) doc(all bool) endpointsDoc {
	t := r.current.Load()
	doc := endpointsDoc{Services: []serviceDoc{}}
	if t == nil || t.snap == nil {
		return doc
	}
	doc.Revision = t.snap.Revision()
	for _, s := range t.snap.Services() {
		if s.Unresolved {
			doc.Unresolved++
			if !all {
				continue
			}
		}
		sd := serviceDoc{Name: s.Name, Protocol: s.Protocol.String(), Balancer: s.Balancer.String(), Endpoints: []endpointDoc{}, Unresolved: s.Unresolved}
		for _, a := range s.Addresses {
			sd.Addresses = append(sd.Addresses, a.String())
		}
		sd.Addresses = append(sd.Addresses, s.Authorities...)
		stats := map[netip.AddrPort]balance.EndpointStats{}
		var budget *retry.Budget
		if svc := t.services[s]; svc != nil {
			for _, e := range svc.balancer.Stats() {
				stats[e.Endpoint.Addr] = e
			}
			budget = svc.budget
		}
		sd.Policy = policyDocOf(s.PolicyOf(), budget)
		for _, e := range s.Endpoints {
			st := stats[e.Addr]
			ed := endpointDoc{
				Address: e.Addr.String(), Identity: e.Identity, Weight: e.Weight, Zone: e.Zone,
				InFlight: st.InFlight, RTTms: float64(st.RTT.Microseconds()) / 1000, Sampled: st.Sampled,
				State: st.State, ConsecutiveFailures: st.ConsecutiveFailures, Ejections: st.Ejections,
			}
			if st.State == balance.StateEjected {
				until := st.EjectedUntil.UTC()
				ed.EjectedUntil = &until
			}
			sd.Endpoints = append(sd.Endpoints, ed)
		}
		doc.Services = append(doc.Services, sd)
	}
	return doc
}
