package proxy

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/proxy/balance"
)

// service is a discovered service with the balancer that spreads its requests.
type service struct {
	*discovery.Service
	balancer  balance.Balancer
	authority string // label for metrics: the service's first authority, else its name
}

// table is one immutable routing view: a discovery snapshot and a balancer per service.
// Lookups read it through one atomic load, like a grpc-go picker.
type table struct {
	snap     *discovery.Snapshot
	services map[*discovery.Service]*service
	// meshed maps a meshed endpoint's address to the identity its proxy must prove; an
	// identity that does not parse maps to the zero ID, so dialling it fails closed.
	meshed map[netip.AddrPort]spiffeid.ID
}

func (t *table) lookup(dst netip.AddrPort) *service {
	if t == nil || t.snap == nil {
		return nil
	}
	s, ok := t.snap.Lookup(dst)
	if !ok {
		return nil
	}
	return t.services[s]
}

// routes follows discovery. Balancers live as long as their service's name, so a reload
// keeps every endpoint's latency and in-flight statistics.
type routes struct {
	current atomic.Pointer[table]
	opts    balance.Options

	mu        sync.Mutex
	balancers map[string]kept // by service name
}

// kept is a service's balancer and the algorithm it was made for.
type kept struct {
	balance.Balancer
	kind discovery.Balancer
}

func newRoutes(opts balance.Options) *routes {
	return &routes{opts: opts, balancers: map[string]kept{}}
}

// update installs a new snapshot and returns the endpoints whose peer changed: meshed with
// another identity (reidentified), or meshed then and not now, or the reverse. It is called by
// the one goroutine that follows discovery.
func (r *routes) update(snap *discovery.Snapshot) (changed, reidentified []netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := &table{snap: snap, services: map[*discovery.Service]*service{}, meshed: map[netip.AddrPort]spiffeid.ID{}}
	seen := map[string]bool{}
	for _, s := range snap.Services() {
		k, ok := r.balancers[s.Name]
		if !ok || k.kind != s.Balancer {
			k = kept{balance.New(s.Balancer, r.opts), s.Balancer}
			r.balancers[s.Name] = k
		}
		k.Update(s.Endpoints)
		seen[s.Name] = true
		for _, e := range s.Endpoints {
			if e.Meshed() {
				id, _ := spiffeid.FromString(e.Identity) // the parser checked it
				t.meshed[e.Addr] = id
			}
		}
		auth := s.Name
		if len(s.Authorities) > 0 {
			auth = s.Authorities[0]
		}
		t.services[s] = &service{Service: s, balancer: k.Balancer, authority: auth}
	}
	for name := range r.balancers {
		if !seen[name] {
			delete(r.balancers, name)
		}
	}
	if old := r.current.Load(); old != nil {
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
	return changed, reidentified
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

// endpointsDoc is /debug/endpoints: every service with its endpoints and their load.
type endpointsDoc struct {
	Revision string       `json:"revision"`
	Services []serviceDoc `json:"services"`
}

type serviceDoc struct {
	Name      string        `json:"name"`
	Addresses []string      `json:"addresses"`
	Protocol  string        `json:"protocol"`
	Balancer  string        `json:"balancer"`
	Endpoints []endpointDoc `json:"endpoints"`
}

type endpointDoc struct {
	Address  string  `json:"address"`
	Identity string  `json:"identity,omitempty"`
	Weight   uint32  `json:"weight"`
	Zone     string  `json:"zone,omitempty"`
	InFlight int64   `json:"in_flight"`
	RTTms    float64 `json:"rtt_ms,omitempty"` // peak-EWMA estimate, p2c-ewma only
	Sampled  bool    `json:"sampled,omitempty"`
}

func (r *routes) doc() endpointsDoc {
	t := r.current.Load()
	doc := endpointsDoc{Services: []serviceDoc{}}
	if t == nil || t.snap == nil {
		return doc
	}
	doc.Revision = t.snap.Revision()
	for _, s := range t.snap.Services() {
		sd := serviceDoc{Name: s.Name, Protocol: s.Protocol.String(), Balancer: s.Balancer.String(), Endpoints: []endpointDoc{}}
		for _, a := range s.Addresses {
			sd.Addresses = append(sd.Addresses, a.String())
		}
		sd.Addresses = append(sd.Addresses, s.Authorities...)
		stats := map[netip.AddrPort]balance.EndpointStats{}
		if st, ok := t.services[s].balancer.(interface {
			Stats() []balance.EndpointStats
		}); ok {
			for _, e := range st.Stats() {
				stats[e.Endpoint.Addr] = e
			}
		}
		for _, e := range s.Endpoints {
			st := stats[e.Addr]
			sd.Endpoints = append(sd.Endpoints, endpointDoc{
				Address: e.Addr.String(), Identity: e.Identity, Weight: e.Weight, Zone: e.Zone,
				InFlight: st.InFlight, RTTms: float64(st.RTT.Microseconds()) / 1000, Sampled: st.Sampled,
			})
		}
		doc.Services = append(doc.Services, sd)
	}
	return doc
}
