package resolve

import (
	"io"
	"log/slog"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/discovery"
)

// FuzzApplyResponses feeds the client whatever a controller might send, three responses in a
// row, and checks that it never panics, that a refused table leaves the table held as it was,
// and that every snapshot it publishes is one the discovery file's parser accepts (so nothing
// the file would refuse reaches the proxy's routing).
func FuzzApplyResponses(f *testing.F) {
	ep := func(addr, id string) *discoverypb.Endpoint { return &discoverypb.Endpoint{Address: addr, Identity: id} }
	good := []*discoverypb.DiscoveryResponse{
		{Nonce: "1", Table: &discoverypb.ServiceTable{Version: "t1", TrustDomain: "cluster.local", Services: []*discoverypb.Service{
			{Name: "a.b", Addresses: []string{"198.19.0.1:80"}, Authorities: []string{"a.b:80"}, Protocol: "http2"},
			{Name: "c.d", Addresses: []string{"[fd00::1]:80"}, Balancer: "round-robin"}}}},
		{Nonce: "2", Endpoints: []*discoverypb.Endpoints{{Service: "a.b", Version: "e1",
			Endpoints: []*discoverypb.Endpoint{ep("198.18.0.1:80", "spiffe://cluster.local/ns/a/sa/b"), ep("198.18.0.2:80", "")}}}},
		{Nonce: "3", Table: &discoverypb.ServiceTable{Version: "t2", BaseVersion: "t1", TrustDomain: "cluster.local", Removed: []string{"c.d"}},
			Endpoints: []*discoverypb.Endpoints{{Service: "a.b", Version: "e2", BaseVersion: "e1", Removed: []string{"198.18.0.2:80"}},
				{Service: "c.d", Unknown: true}}},
	}
	bad := []*discoverypb.DiscoveryResponse{
		{Table: &discoverypb.ServiceTable{Version: "x", Services: []*discoverypb.Service{{Name: "a.b", Addresses: []string{"198.19.0.1:80"}}, {Name: "e.f", Addresses: []string{"198.19.0.1:80"}}}}},
		{Endpoints: []*discoverypb.Endpoints{{Service: "a.b", Version: "e9", Endpoints: []*discoverypb.Endpoint{ep("198.18.0.1:80", ""), ep("198.18.0.1:80", "")}}}},
		{Table: &discoverypb.ServiceTable{Version: "y", TrustDomain: "Bad Domain"}},
	}
	wire := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	f.Add(wire(good[0]), wire(good[1]), wire(good[2]))
	f.Add(wire(good[0]), wire(bad[1]), wire(good[2]))
	f.Add(wire(bad[0]), wire(good[0]), wire(bad[2]))
	f.Add(wire(good[0]), wire(good[2]), wire(good[1]))
	f.Fuzz(func(t *testing.T, m1, m2, m3 []byte) {
		c := newController(ControllerOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		c.Use("a.b")
		c.Use("c.d")
		for _, m := range [][]byte{m1, m2, m3} {
			var resp discoverypb.DiscoveryResponse
			if proto.Unmarshal(m, &resp) != nil {
				continue
			}
			c.mu.Lock()
			tableBefore, entriesBefore := c.table, reflect.ValueOf(c.entries).Pointer()
			c.applyLocked(&resp)
			replaced := reflect.ValueOf(c.entries).Pointer() != entriesBefore
			accepted := resp.Table != nil && c.table == resp.Table.GetVersion() && replaced
			c.mu.Unlock()
			if !accepted && (replaced || c.table != tableBefore) {
				t.Fatalf("a refused (or absent) table changed the table held: %q -> %q", tableBefore, c.table)
			}
			snap := c.Snapshot()
			if snap == nil {
				continue
			}
			if _, err := discovery.Parse("published", discovery.Format(snap)); err != nil {
				t.Fatalf("the client published a snapshot the file parser refuses: %v\n%s", err, discovery.Format(snap))
			}
			for _, svc := range snap.Services() {
				c.mu.Lock()
				s := c.subs[svc.Name]
				c.mu.Unlock()
				if !svc.Unresolved && (s == nil || !s.resolved) {
					t.Fatalf("%s is resolved without an answer", svc.Name)
				}
			}
		}
	})
}
