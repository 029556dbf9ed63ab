package destination

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/discovery"
)

// maxHistory bounds the table changes kept to make deltas for a proxy that is several versions
// behind (a slow reader, a short reconnection). Past it, such a proxy gets the complete table.
const maxHistory = 64

// state is the mesh as the proxies are served it, derived from one source snapshot: versions,
// and the messages that bring a proxy from the previous state to this one, each built once
// however many proxies it goes to. It is immutable once built (the complete messages are built
// on first use, once).
type state struct {
	td       discovery.TrustDomain
	table    string                   // version of the table: every entry, no endpoints
	services map[string]*serviceState // by name
	order    []*serviceState          // in the source's order, for the complete table
	// history is the table's changes up to this state, oldest first, the last one being the
	// step to this state (or older steps when this state did not change the table).
	history []*tableStep
	// changed names the services whose entry or endpoints differ from the previous state,
	// added and removed ones included: the streams subscribed to them need a message.
	changed []string
	// tableChanged says the table differs from the previous state: every stream needs it.
	tableChanged bool

	completeOnce sync.Once
	complete     *discoverypb.ServiceTable
}

// tableStep is one change of the table.
type tableStep struct {
	base, version string
	changed       []string                  // names added, changed or removed
	msg           *discoverypb.ServiceTable // the delta from base to version
}

// serviceState is one service of a state. Consecutive states share the parts that did not
// change: the entry's message while the entry stays, the endpoints while they stay.
type serviceState struct {
	svc       *discovery.Service
	entry     *discoverypb.Service
	entryHash [sha256.Size]byte
	eps       *endpointsState
}

// endpointsState is one version of a service's endpoint set.
type endpointsState struct {
	name    string
	version string
	set     []discovery.Endpoint   // sorted by address, one per address
	delta   *discoverypb.Endpoints // from the previous version; nil when there was none

	completeOnce sync.Once
	complete     *discoverypb.Endpoints
}

// next computes the state for snap from prev (nil for the first). It compares services by
// pointer first (a Source keeps the *Service of an unchanged service) and by value only when
// the pointers differ, and builds messages only for what changed.
func next(prev *state, snap *discovery.Snapshot) *state {
	st := &state{td: snap.TrustDomain(), services: make(map[string]*serviceState, len(snap.Services()))}
	tdChanged := prev != nil && prev.td != st.td
	var tableChanged []string
	for _, svc := range snap.Services() {
		if _, dup := st.services[svc.Name]; dup {
			continue // a snapshot's first service of a name wins, as its lookups do
		}
		var old *serviceState
		if prev != nil {
			old = prev.services[svc.Name]
		}
		ss := &serviceState{svc: svc}
		switch {
		case old != nil && old.svc == svc && !tdChanged:
			ss = old
		case old != nil && old.svc.EqualEntry(svc):
			ss.entry, ss.entryHash = old.entry, old.entryHash
		default:
			ss.entry = discovery.EntryToProto(svc)
			ss.entryHash = hashEntry(ss.entry)
			tableChanged = append(tableChanged, svc.Name)
		}
		if ss != old {
			var oldEps *endpointsState
			if old != nil {
				oldEps = old.eps
			}
			ss.eps = nextEndpoints(oldEps, svc, st.td, tdChanged)
			if old == nil || ss.eps != oldEps || ss.entry != old.entry {
				st.changed = append(st.changed, svc.Name)
			}
		}
		st.services[svc.Name] = ss
		st.order = append(st.order, ss)
	}
	if prev != nil {
		for _, old := range prev.order {
			if _, ok := st.services[old.svc.Name]; !ok {
				tableChanged = append(tableChanged, old.svc.Name)
				st.changed = append(st.changed, old.svc.Name)
			}
		}
	}
	if prev == nil || len(tableChanged) > 0 || tdChanged {
		st.table = st.tableVersion()
	} else {
		st.table = prev.table
	}
	if prev != nil {
		st.history = prev.history
		if st.table != prev.table {
			st.tableChanged = true
			step := &tableStep{base: prev.table, version: st.table, changed: tableChanged}
			step.msg = st.tableDelta(prev.table, tableChanged)
			st.history = append(slices.Clone(prev.history[max(0, len(prev.history)-maxHistory+1):]), step)
		}
	}
	return st
}

// nextEndpoints returns old when svc's endpoints are the same set, else the new version with its
// delta from old. After a change of trust domain there is no delta: a proxy checks every
// identity of a set against the trust domain, so it is sent every set complete.
func nextEndpoints(old *endpointsState, svc *discovery.Service, td discovery.TrustDomain, tdChanged bool) *endpointsState {
	set := normalize(svc.Endpoints)
	version := hashEndpoints(td, set)
	if old != nil && old.version == version {
		return old
	}
	eps := &endpointsState{name: svc.Name, version: version, set: set}
	if old != nil && !tdChanged {
		eps.delta = diffEndpoints(old, eps)
	}
	return eps
}

// normalize returns the endpoints sorted by address, the first of each address kept (a source
// listing one address twice is not the proxies' problem).
func normalize(eps []discovery.Endpoint) []discovery.Endpoint {
	set := slices.Clone(eps)
	slices.SortStableFunc(set, func(a, b discovery.Endpoint) int { return a.Addr.Compare(b.Addr) })
	return slices.CompactFunc(set, func(a, b discovery.Endpoint) bool { return a.Addr == b.Addr })
}

// diffEndpoints is the message that turns old's set into next's: the endpoints added or
// changed, and the addresses removed, in address order.
func diffEndpoints(old, next *endpointsState) *discoverypb.Endpoints {
	msg := &discoverypb.Endpoints{Service: next.name, Version: next.version, BaseVersion: old.version}
	i, j := 0, 0
	for i < len(old.set) || j < len(next.set) {
		switch {
		case j == len(next.set) || i < len(old.set) && old.set[i].Addr.Compare(next.set[j].Addr) < 0:
			msg.Removed = append(msg.Removed, old.set[i].Addr.String())
			i++
		case i == len(old.set) || old.set[i].Addr.Compare(next.set[j].Addr) > 0:
			msg.Endpoints = append(msg.Endpoints, discovery.EndpointToProto(&next.set[j]))
			j++
		default:
			if !old.set[i].Equal(&next.set[j]) {
				msg.Endpoints = append(msg.Endpoints, discovery.EndpointToProto(&next.set[j]))
			}
			i++
			j++
		}
	}
	return msg
}

// completeMsg is the whole set, for a proxy that holds no version of it or one too old.
func (e *endpointsState) completeMsg() *discoverypb.Endpoints {
	e.completeOnce.Do(func() {
		e.complete = &discoverypb.Endpoints{Service: e.name, Version: e.version,
			Endpoints: make([]*discoverypb.Endpoint, len(e.set))}
		for i := range e.set {
			e.complete.Endpoints[i] = discovery.EndpointToProto(&e.set[i])
		}
	})
	return e.complete
}

// messageFor is what brings a proxy holding version have to e: the delta when have is its
// base, else the complete set.
func (e *endpointsState) messageFor(have string) *discoverypb.Endpoints {
	if e.delta != nil && e.delta.BaseVersion == have && have != "" {
		return e.delta
	}
	return e.completeMsg()
}

// tableFor is what brings a proxy holding table version have to this state: nil when it is
// current, the delta of one step or of several composed when have is in the history, else the
// complete table.
func (st *state) tableFor(have string) *discoverypb.ServiceTable {
	if have == st.table {
		return nil
	}
	if have != "" {
		for i := len(st.history) - 1; i >= 0; i-- {
			if st.history[i].base != have {
				continue
			}
			if i == len(st.history)-1 {
				return st.history[i].msg
			}
			var names []string
			for _, step := range st.history[i:] {
				names = append(names, step.changed...)
			}
			slices.Sort(names)
			return st.tableDelta(have, slices.Compact(names))
		}
	}
	return st.completeTable()
}

// tableDelta is the message from version base to this state for the services named.
func (st *state) tableDelta(base string, names []string) *discoverypb.ServiceTable {
	msg := &discoverypb.ServiceTable{Version: st.table, BaseVersion: base, TrustDomain: string(st.td)}
	for _, name := range names {
		if ss, ok := st.services[name]; ok {
			msg.Services = append(msg.Services, ss.entry)
		} else {
			msg.Removed = append(msg.Removed, name)
		}
	}
	return msg
}

func (st *state) completeTable() *discoverypb.ServiceTable {
	st.completeOnce.Do(func() {
		st.complete = &discoverypb.ServiceTable{Version: st.table, TrustDomain: string(st.td),
			Services: make([]*discoverypb.Service, len(st.order))}
		for i, ss := range st.order {
			st.complete.Services[i] = ss.entry
		}
	})
	return st.complete
}

// tableVersion hashes the trust domain and every entry in name order, so the version names the
// content whatever the source's order, and a restarted controller gives the same version for
// the same content (a reconnecting proxy then needs nothing).
func (st *state) tableVersion() string {
	names := make([]string, 0, len(st.services))
	for name := range st.services {
		names = append(names, name)
	}
	slices.Sort(names)
	h := sha256.New()
	h.Write([]byte(st.td))
	h.Write([]byte{0})
	for _, name := range names {
		sum := st.services[name].entryHash
		h.Write(sum[:])
	}
	return short(h.Sum(nil))
}

func hashEntry(pb *discoverypb.Service) [sha256.Size]byte {
	// Deterministic marshalling of a message of strings is stable for one build, which is
	// all a version needs; a controller upgrade at worst resends the table once.
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(pb)
	return sha256.Sum256(b)
}

func hashEndpoints(td discovery.TrustDomain, set []discovery.Endpoint) string {
	h := sha256.New()
	b := append([]byte(td), 0)
	for _, e := range set {
		b = e.Addr.AppendTo(b)
		b = append(b, 0)
		b = append(b, e.Identity...)
		b = append(b, 0)
		b = strconv.AppendUint(b, uint64(e.Weight), 10)
		b = append(b, 0)
		b = append(b, e.Zone...)
		for _, z := range e.ForZones {
			b = append(b, ' ')
			b = append(b, z...)
		}
		b = append(b, '\n')
		if len(b) > 4096 {
			h.Write(b)
			b = b[:0]
		}
	}
	h.Write(b)
	return short(h.Sum(nil))
}

// short is a version string: 16 hex digits of a hash, enough that two contents of one service
// never share one.
func short(sum []byte) string { return hex.EncodeToString(sum[:8]) }
