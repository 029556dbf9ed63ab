package integration

import (
	"fmt"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// serveHTTP runs a server on port 8081 of pod, HTTP/1.1 and h2c with prior knowledge, that
// answers with the pod's name and protocol, and a WebSocket echo at /ws.
func serveHTTP(t testing.TB, pod *netns.Pod, h2requests *atomic.Int64) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 {
			h2requests.Add(1)
		}
		fmt.Fprintf(w, "%s %s\n", pod.Name, r.Proto)
	})
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) {
		for {
			var msg string
			if err := websocket.Message.Receive(c, &msg); err != nil {
				return
			}
			if err := websocket.Message.Send(c, msg); err != nil {
				return
			}
		}
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	for _, ln := range listenAll(t, pod, 8081) {
		go srv.Serve(ln)
	}
	t.Cleanup(func() { srv.Close() })
}

// webCluster is a client pod and two meshed web servers behind VIPs 198.19.0.30:80 and
// [fd00:de71::30]:80, balanced round robin: sequential requests alternate, which makes
// per-request balancing visible (P2C sends sequential requests to the fastest endpoint).
func webCluster(t *testing.T) (client *netns.Pod, servers []*netns.Pod, vips []netip.AddrPort, h2requests []*atomic.Int64) {
	topo := nstest.Topology(t)
	client = addPod(t, topo, "client")
	vips = []netip.AddrPort{netip.MustParseAddrPort("198.19.0.30:80"), netip.MustParseAddrPort("[fd00:de71::30]:80")}
	var disc strings.Builder
	disc.WriteString("trustDomain: cluster.local\nservices:\n")
	for i := range 2 {
		s := addPod(t, topo, fmt.Sprintf("web-%d", i))
		h2requests = append(h2requests, new(atomic.Int64))
		serveHTTP(t, s, h2requests[i])
		servers = append(servers, s)
	}
	for i, fam := range families {
		fmt.Fprintf(&disc, "  - name: web%d.stocks\n    addresses: [%q]\n    balancer: round-robin\n    endpoints:\n", i, vips[i].String())
		for _, s := range servers {
			fmt.Fprintf(&disc, "      - address: %q\n", netip.AddrPortFrom(fam.addr(s), 8081).String())
		}
	}
	mesh(t, client, writeDiscovery(t, disc.String()))
	for _, s := range servers {
		mesh(t, s, "")
	}
	return client, servers, vips, h2requests
}

// curlIn runs curl inside ns and returns what it printed.
func curlIn(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	var out, errb strings.Builder
	cmd := exec.Command("curl", append([]string{"-sS", "-m", "5"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := ns.Run(cmd); err != nil {
		t.Fatalf("curl %v: %v: %s", args, err, errb.String())
	}
	return out.String() + errb.String()
}

// TestHTTPThroughTheMesh: requests over one connection, HTTP/1.1 keep-alive (curl) and HTTP/2
// with prior knowledge (h2load; Debian 12's curl 7.88 cannot reuse a prior-knowledge
// connection even without a proxy), are balanced one by one; a WebSocket upgrade becomes a relay.
func TestHTTPThroughTheMesh(t *testing.T) {
	client, servers, vips, h2requests := webCluster(t)
	for i, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			url := fmt.Sprintf("http://%s/", vips[i])
			var urls []string
			for range 10 {
				urls = append(urls, url)
			}
			t.Run("HTTP/1.1 keep-alive with curl", func(t *testing.T) {
				out := curlIn(t, client.NS, append([]string{"--http1.1", "-v"}, urls...)...)
				if n := strings.Count(out, "Connected to"); n != 1 {
					t.Errorf("curl opened %d connections, want 1 reused", n)
				}
				for _, s := range servers {
					if n := strings.Count(out, s.Name+" HTTP/1.1"); n != 5 {
						t.Errorf("%s answered %d of 10 requests, want 5 (round robin):\n%s", s.Name, n, out)
					}
				}
			})
			t.Run("HTTP/2 with prior knowledge", func(t *testing.T) {
				if out := curlIn(t, client.NS, "--http2-prior-knowledge", url); !strings.Contains(out, " HTTP/2.0") {
					t.Fatalf("curl over HTTP/2 got %q", out)
				}
				before := []int64{h2requests[0].Load(), h2requests[1].Load()}
				var out strings.Builder
				h2load := exec.Command("h2load", "-c", "1", "-m", "1", "-n", "10", url)
				h2load.Stdout, h2load.Stderr = &out, &out
				if err := client.NS.Run(h2load); err != nil || !strings.Contains(out.String(), "10 succeeded") {
					t.Fatalf("h2load: %v\n%s", err, out.String())
				}
				for i, s := range servers {
					if n := h2requests[i].Load() - before[i]; n != 5 {
						t.Errorf("%s served %d of 10 HTTP/2 requests on one connection, want 5 (round robin)", s.Name, n)
					}
				}
			})
			t.Run("a WebSocket upgrade relays both ways", func(t *testing.T) {
				conn := dial(t, client.NS, vips[i])
				cfg, err := websocket.NewConfig(fmt.Sprintf("ws://%s/ws", vips[i]), "http://localhost/")
				if err != nil {
					t.Fatal(err)
				}
				ws, err := websocket.NewClient(cfg, conn)
				if err != nil {
					t.Fatal(err)
				}
				defer ws.Close()
				for _, msg := range []string{"hello", strings.Repeat("x", 70000), "bye"} {
					if err := websocket.Message.Send(ws, msg); err != nil {
						t.Fatal(err)
					}
					var got string
					ws.SetReadDeadline(time.Now().Add(3 * time.Second))
					if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
						t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(got), err)
					}
				}
			})
		})
	}
}
