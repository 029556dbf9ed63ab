package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/detourmesh/detour/examples/stockkube/stockpb"
	"github.com/detourmesh/detour/netns"
)

// debugEndpoints is the part of a proxy's /debug/endpoints the discovery tests read.
type debugEndpoints struct {
	Services []struct {
		Name       string `json:"name"`
		Unresolved bool   `json:"unresolved"`
		Endpoints  []struct {
			Address string `json:"address"`
		} `json:"endpoints"`
	} `json:"services"`
	Unresolved int `json:"unresolved"`
}

func endpointsDoc(t testing.TB, m *meshPod, query string) debugEndpoints {
	t.Helper()
	code, body := m.admin(t, "/debug/endpoints"+query)
	var doc debugEndpoints
	if code != 200 {
		t.Fatalf("/debug/endpoints: %d %s", code, body)
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("/debug/endpoints: %v\n%s", err, body)
	}
	return doc
}

// endpointsOf is the addresses /debug/endpoints lists for the service, nil if it lists none.
func (d debugEndpoints) endpointsOf(name string) []string {
	for _, s := range d.Services {
		if s.Name == name {
			var out []string
			for _, e := range s.Endpoints {
				out = append(out, e.Address)
			}
			return out
		}
	}
	return nil
}

// unusedServices are n services with endpoints at addresses nobody serves, for a proxy that
// never uses them.
func unusedServices(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "  - name: unused%d.elsewhere\n    addresses: [\"198.19.1.%d:80\"]\n    endpoints:\n", i, i+1)
		for j := range 3 {
			fmt.Fprintf(&b, "      - address: 198.18.200.%d:%d\n        identity: %s\n", i+1, 8080+j, spiffeID("elsewhere", "unused"))
		}
	}
	return b.String()
}

// TestAProxyLearnsOnlyTheEndpointsOfTheServicesItUses: a proxy on the controller knows the
// mesh's table but the endpoints only of the service it calls; an endpoint added to that
// service reaches it within the bound and takes calls, and the services it never called stay
// without endpoints in its view.
func TestAProxyLearnsOnlyTheEndpointsOfTheServicesItUses(t *testing.T) {
	topo := nstestTopology(t)
	ca := newMeshCA(t, topo, time.Hour)
	client := addPod(t, topo, "client")
	servers := []*netns.Pod{addPod(t, topo, "server-0"), addPod(t, topo, "server-1")}
	for i, s := range servers {
		serveStockData(t, s, fmt.Sprintf("server-%d", i), 0)
	}
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	stockID := spiffeID("stocks", "stockdata")
	cf := ca.meshFlags(t, spiffeID("web", "stockweb"))
	sfs := [][]string{ca.meshFlags(t, stockID), ca.meshFlags(t, stockID)}
	const unused = 50
	file := func(replicas []*netns.Pod) string {
		return stockDiscoveryWithIdentity(vip, replicas, stockID) + unusedServices(unused)
	}
	ca.start(t, file(servers[:1]))
	for i, s := range servers {
		meshWithIdentity(t, s, sfs[i])
	}
	cli := meshWithIdentity(t, client, cf)

	if doc := endpointsDoc(t, cli, ""); len(doc.Services) != 0 || doc.Unresolved != unused+1 {
		t.Fatalf("before any call the proxy lists %d services with endpoints and %d without, want 0 and %d", len(doc.Services), doc.Unresolved, unused+1)
	}
	cc := stockpb.NewStockDataClient(grpcClientIn(t, client.NS, vip.String()))
	call := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q, err := cc.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME"})
		return q.GetServer(), err
	}
	// The first call waits for the subscription's first answer, then goes through.
	if got, err := call(); err != nil || got != "server-0" {
		t.Fatalf("the first call: %q, %v", got, err)
	}
	doc := endpointsDoc(t, cli, "")
	if len(doc.Services) != 1 || len(doc.endpointsOf("stockdata.stocks")) != 1 || doc.Unresolved != unused {
		t.Fatalf("after a call to stockdata: %+v", doc)
	}

	// A second replica: the bound is the controller's file source noticing the change (two polls
	// of 500 ms) and the delivery.
	const bound = 3 * time.Second
	if err := os.WriteFile(ca.disc, []byte(file(servers)), 0o644); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	for len(endpointsDoc(t, cli, "").endpointsOf("stockdata.stocks")) != 2 {
		if time.Since(written) > bound {
			t.Fatalf("the new endpoint did not reach the proxy within %s: %+v", bound, endpointsDoc(t, cli, ""))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the new endpoint reached the proxy %s after the file was written", time.Since(written).Round(time.Millisecond))
	seen := map[string]bool{}
	for range 50 {
		got, err := call()
		if err != nil {
			t.Fatal(err)
		}
		seen[got] = true
	}
	if !seen["server-1"] {
		t.Errorf("no call reached the new replica: %v", seen)
	}

	// The services it never called: in the table, never an endpoint.
	all := endpointsDoc(t, cli, "?all")
	for _, s := range all.Services {
		if s.Name != "stockdata.stocks" && (!s.Unresolved || len(s.Endpoints) != 0) {
			t.Errorf("the proxy holds endpoints of %s, which it never called: %+v", s.Name, s)
		}
	}
	if len(all.Services) != unused+1 {
		t.Errorf("/debug/endpoints?all lists %d services, want the table's %d", len(all.Services), unused+1)
	}
}
