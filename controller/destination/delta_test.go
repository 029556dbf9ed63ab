package destination

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/discovery"
)

// mesh is a discovery file: services a.x, b.x and c.x at 198.19.0.1..3:80, each with the
// endpoints given (one line each, "address[ identity]").
func mesh(t *testing.T, td string, eps map[string][]string, edits ...func(string) string) *discovery.Snapshot {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "trustDomain: %s\nservices:\n", td)
	for i, name := range []string{"a.x", "b.x", "c.x"} {
		if _, ok := eps[name]; !ok && eps != nil {
			continue
		}
		fmt.Fprintf(&b, "  - name: %s\n    addresses: [\"198.19.0.%d:80\"]\n    endpoints:\n", name, i+1)
		for _, e := range eps[name] {
			addr, id, _ := strings.Cut(e, " ")
			fmt.Fprintf(&b, "      - address: %s\n", addr)
			if id != "" {
				fmt.Fprintf(&b, "        identity: spiffe://%s/ns/x/sa/%s\n", td, id)
			}
		}
	}
	y := b.String()
	for _, e := range edits {
		y = e(y)
	}
	s, err := discovery.Parse("test", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var base = map[string][]string{
	"a.x": {"198.18.0.1:80 a", "198.18.0.2:80 a"},
	"b.x": {"198.18.0.3:80"},
	"c.x": {},
}

func with(m map[string][]string, name string, eps ...string) map[string][]string {
	out := map[string][]string{}
	for k, v := range m {
		out[k] = v
	}
	if eps == nil {
		delete(out, name)
	} else {
		out[name] = eps
	}
	return out
}

func addrs(eps []*discoverypb.Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.Address+" "+e.Identity)
	}
	return out
}

func TestNextComputesWhatChanged(t *testing.T) {
	tests := []struct {
		name        string
		next        func(t *testing.T, prev *discovery.Snapshot) *discovery.Snapshot
		table       bool     // the table changed
		changed     []string // services whose streams need a message
		tableNames  []string // entries in the table delta
		tableGone   []string // names removed in the table delta
		deltaOf     string   // the service whose endpoint delta is checked
		upserts     []string
		removed     []string
		noDelta     bool // the service's endpoints have no delta: complete sets go out
		sameVersion bool // the service's endpoint version did not change
	}{
		{name: "the same snapshot changes nothing",
			next: func(t *testing.T, prev *discovery.Snapshot) *discovery.Snapshot { return prev }},
		{name: "an equal snapshot with new pointers changes nothing",
			next:    func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot { return mesh(t, "cluster.local", base) },
			deltaOf: "a.x", sameVersion: true},
		{name: "endpoints listed in another order are the same version",
			next: func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot {
				return mesh(t, "cluster.local", with(base, "a.x", "198.18.0.2:80 a", "198.18.0.1:80 a"))
			},
			deltaOf: "a.x", sameVersion: true},
		{name: "an added endpoint is a delta of one endpoint for its service only",
			next: func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot {
				return mesh(t, "cluster.local", with(base, "a.x", "198.18.0.1:80 a", "198.18.0.2:80 a", "198.18.0.9:80 a"))
			},
			changed: []string{"a.x"}, deltaOf: "a.x", upserts: []string{"198.18.0.9:80 spiffe://cluster.local/ns/x/sa/a"}},
		{name: "a removed endpoint is a removal",
			next: func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot {
				return mesh(t, "cluster.local", with(base, "a.x", "198.18.0.2:80 a"))
			},
			changed: []string{"a.x"}, deltaOf: "a.x", removed: []string{"198.18.0.1:80"}},
		{name: "an endpoint whose identity changes is sent again whole",
			next: func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot {
				return mesh(t, "cluster.local", with(base, "a.x", "198.18.0.1:80 other", "198.18.0.2:80 a"))
			},
			changed: []string{"a.x"}, deltaOf: "a.x", upserts: []string{"198.18.0.1:80 spiffe://cluster.local/ns/x/sa/other"}},
		{name: "a change of policy changes the table, not the endpoints",
			next: func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot {
				return mesh(t, "cluster.local", base, func(y string) string {
					return strings.Replace(y, "  - name: b.x\n", "  - name: b.x\n    protocol: http2\n", 1)
				})
			},
			table: true, changed: []string{"b.x"}, tableNames: []string{"b.x"}, deltaOf: "b.x", sameVersion: true},
		{name: "an added service is in the table delta and has no endpoint delta",
			next: func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot {
				return mesh(t, "cluster.local", base, func(y string) string {
					return y + "  - name: d.x\n    addresses: [\"198.19.0.4:80\"]\n    endpoints:\n      - address: 198.18.0.4:80\n"
				})
			},
			table: true, changed: []string{"d.x"}, tableNames: []string{"d.x"}, deltaOf: "d.x", noDelta: true},
		{name: "a removed service is a removal from the table",
			next: func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot {
				return mesh(t, "cluster.local", with(base, "b.x"))
			},
			table: true, changed: []string{"b.x"}, tableGone: []string{"b.x"}},
		{name: "a new trust domain changes the table and sends every set complete",
			next:  func(t *testing.T, _ *discovery.Snapshot) *discovery.Snapshot { return mesh(t, "example.org", base) },
			table: true, changed: []string{"a.x", "b.x", "c.x"}, deltaOf: "a.x", noDelta: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prevSnap := mesh(t, "cluster.local", base)
			prev := next(nil, prevSnap)
			st := next(prev, tt.next(t, prevSnap))
			if st.tableChanged != tt.table || (st.table != prev.table) != tt.table {
				t.Errorf("table changed %v (version %s -> %s), want %v", st.tableChanged, prev.table, st.table, tt.table)
			}
			slices.Sort(st.changed)
			if !slices.Equal(st.changed, tt.changed) {
				t.Errorf("changed %v, want %v", st.changed, tt.changed)
			}
			if tt.table {
				step := st.history[len(st.history)-1]
				var names []string
				for _, s := range step.msg.Services {
					names = append(names, s.Name)
				}
				if step.msg.BaseVersion != prev.table || step.msg.Version != st.table ||
					!slices.Equal(names, tt.tableNames) || !slices.Equal(step.msg.Removed, tt.tableGone) {
					t.Errorf("table delta %v, want entries %v and removals %v from %s", step.msg, tt.tableNames, tt.tableGone, prev.table)
				}
				if got := st.tableFor(prev.table); got != step.msg {
					t.Errorf("a proxy one version behind is not sent the shared delta")
				}
			} else if len(st.history) != len(prev.history) {
				t.Errorf("a change without a table change added to the history")
			}
			if tt.deltaOf == "" {
				return
			}
			eps := st.services[tt.deltaOf].eps
			old := prev.services[tt.deltaOf]
			switch {
			case tt.sameVersion:
				if eps != old.eps {
					t.Errorf("the endpoints of %s got a new version %s (was %s)", tt.deltaOf, eps.version, old.eps.version)
				}
			case tt.noDelta:
				if eps.delta != nil {
					t.Errorf("%s has a delta %v, want none", tt.deltaOf, eps.delta)
				}
				if got := eps.messageFor(""); got.BaseVersion != "" || len(got.Endpoints) != len(eps.set) {
					t.Errorf("the complete set of %s: %v", tt.deltaOf, got)
				}
			default:
				d := eps.delta
				if d.BaseVersion != old.eps.version || d.Version != eps.version || d.Service != tt.deltaOf ||
					!slices.Equal(addrs(d.Endpoints), tt.upserts) || !slices.Equal(d.Removed, tt.removed) {
					t.Errorf("delta %v, want %v added and %v removed from %s", d, tt.upserts, tt.removed, old.eps.version)
				}
				if eps.messageFor(old.eps.version) != d {
					t.Errorf("a proxy holding the base is not sent the shared delta")
				}
				if got := eps.messageFor("elsewhere"); got.BaseVersion != "" || len(got.Endpoints) != len(eps.set) {
					t.Errorf("a proxy holding another version is not sent the complete set: %v", got)
				}
			}
		})
	}
}

func TestTableForAProxySeveralVersionsBehind(t *testing.T) {
	v0 := next(nil, mesh(t, "cluster.local", base))
	v1 := next(v0, mesh(t, "cluster.local", with(base, "b.x")))
	roundRobin := func(y string) string {
		return strings.Replace(y, "  - name: c.x\n", "  - name: c.x\n    balancer: round-robin\n", 1)
	}
	v2 := next(v1, mesh(t, "cluster.local", with(base, "b.x"), roundRobin))
	v3 := next(v2, mesh(t, "cluster.local", with(base, "b.x", "198.18.0.5:80"), roundRobin)) // b.x comes back

	if got := v3.tableFor(v3.table); got != nil {
		t.Errorf("a current proxy is sent %v", got)
	}
	got := v3.tableFor(v0.table)
	var names []string
	for _, s := range got.Services {
		names = append(names, s.Name)
	}
	// b.x went and came back, c.x changed: both are sent as they are now; nothing is removed.
	if got.BaseVersion != v0.table || got.Version != v3.table || !slices.Equal(names, []string{"b.x", "c.x"}) || len(got.Removed) != 0 {
		t.Errorf("composed delta %v", got)
	}
	if got := v3.tableFor("unknown"); got.BaseVersion != "" || len(got.Services) != 3 {
		t.Errorf("a proxy with a version the controller does not know gets %v, want the complete table", got)
	}
	// The table is entries only: a state whose entries are v0's has v0's version.
	if back := next(v3, mesh(t, "cluster.local", base)); back.table != v0.table {
		t.Errorf("the same entries have another table version")
	}
	if got := v3.tableFor(""); got != v3.completeTable() {
		t.Errorf("a proxy with no table does not get the complete table")
	}

	// A restarted controller with the same content has the same versions.
	again := next(nil, mesh(t, "cluster.local", with(base, "b.x", "198.18.0.5:80"), roundRobin))
	if again.table != v3.table || again.services["b.x"].eps.version != v3.services["b.x"].eps.version {
		t.Errorf("the same content has other versions after a restart")
	}
}

func TestHistoryIsBounded(t *testing.T) {
	st := next(nil, mesh(t, "cluster.local", base))
	first := st.table
	for i := range maxHistory + 5 {
		st = next(st, mesh(t, "cluster.local", base, func(y string) string {
			return y + fmt.Sprintf("  - name: n%d.x\n    addresses: [\"198.19.1.%d:80\"]\n", i, i)
		}))
	}
	if len(st.history) != maxHistory {
		t.Fatalf("history holds %d steps, want %d", len(st.history), maxHistory)
	}
	if got := st.tableFor(first); got.BaseVersion != "" {
		t.Errorf("a proxy older than the history got a delta")
	}
}
