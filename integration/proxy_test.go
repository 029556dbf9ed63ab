package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	osexec "os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/detourmesh/detour/examples/stockkube/stockpb"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// listenAll listens on port on every IPv4 and IPv6 address of pod until the test ends.
func listenAll(t testing.TB, pod *netns.Pod, port uint16) []net.Listener {
	t.Helper()
	var lns []net.Listener
	for _, network := range []string{"tcp4", "tcp6"} {
		var ln net.Listener
		if err := pod.NS.Do(func() error {
			var err error
			ln, err = net.Listen(network, fmt.Sprintf(":%d", port))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		lns = append(lns, ln)
	}
	return lns
}

// serveTCP runs handle for every connection to port on every address of pod.
func serveTCP(t testing.TB, pod *netns.Pod, port uint16, handle func(net.Conn)) {
	t.Helper()
	for _, ln := range listenAll(t, pod, port) {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); handle(c) }()
			}
		}()
	}
}

func echo(c net.Conn) { io.Copy(c, c) }

// greet speaks first, like SMTP or MySQL, then echoes.
func greet(c net.Conn) {
	fmt.Fprintf(c, "220 ready\r\n")
	io.Copy(c, c)
}

// TestTCPThroughTheMesh: protocols the proxy does not speak pass byte for byte, and a server
// that speaks first is not kept waiting by detection on an opaque port.
func TestTCPThroughTheMesh(t *testing.T) {
	topo := nstest.Topology(t)
	client, server := addPod(t, topo, "client"), addPod(t, topo, "server")
	serveTCP(t, server, 9000, echo)
	serveTCP(t, server, 3306, greet) // in the default opaque ports
	mesh(t, server, "")
	mesh(t, client, "", "--detect-timeout", "5s")

	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			t.Run("an echo protocol passes byte for byte both ways", func(t *testing.T) {
				c := dial(t, client.NS, netip.AddrPortFrom(fam.addr(server), 9000))
				payload := make([]byte, 1<<20)
				for i := range payload {
					payload[i] = byte(i*31 + i>>8)
				}
				go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
				got, err := io.ReadAll(c)
				if err != nil || string(got) != string(payload) {
					t.Fatalf("echoed %d bytes (err %v), want the same %d bytes back", len(got), err, len(payload))
				}
			})
			t.Run("a lower-case text command is relayed at once on a detected port", func(t *testing.T) {
				c := dial(t, client.NS, netip.AddrPortFrom(fam.addr(server), 9000))
				c.Write([]byte("ping"))                        // no line end: only its first byte tells it is not HTTP
				c.SetReadDeadline(time.Now().Add(time.Second)) // far below the 5 s detection timeout
				got := make([]byte, 4)
				if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
					t.Fatalf("echo %q, %v: detection must not hold a client whose first byte is not HTTP", got, err)
				}
			})
			t.Run("a server that speaks first answers at once on an opaque port", func(t *testing.T) {
				c := dial(t, client.NS, netip.AddrPortFrom(fam.addr(server), 3306))
				c.SetReadDeadline(time.Now().Add(time.Second)) // far below the 5 s detection timeout
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil || line != "220 ready\r\n" {
					t.Fatalf("greeting %q, %v: detection must not hold a server-first protocol", line, err)
				}
			})
		})
	}
}

// TestInboundIsNoOpenRelay: a connection that reaches the inbound port but was meant for
// another host is closed, not forwarded.
func TestInboundIsNoOpenRelay(t *testing.T) {
	topo := nstest.Topology(t)
	attacker, victim, third := addPod(t, topo, "attacker"), addPod(t, topo, "victim"), addPod(t, topo, "third")
	serveTCP(t, third, 9000, echo)
	m := mesh(t, victim, "")
	// The attacker routes traffic for the third pod through the victim and hopes its
	// PREROUTING redirect forwards it.
	err := attacker.NS.Do(func() error {
		_, err := cmdOut("ip", "route", "add", third.IPv4.String()+"/32", "via", victim.IPv4.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, attacker.NS, netip.AddrPortFrom(third.IPv4, 9000))
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(make([]byte, 16)); err == nil {
		t.Fatalf("got %d bytes back through the victim's inbound port", n)
	}
	m.waitLog(t, "no open relay")
}

// TestUnknownDestinationsLeaveUntouched: outbound traffic to a destination discovery does not
// know goes to its original address, and HTTP to it is not rewritten.
func TestUnknownDestinationsLeaveUntouched(t *testing.T) {
	topo := nstest.Topology(t)
	client, server := addPod(t, topo, "client"), addPod(t, topo, "server") // server not meshed
	got := make(chan string, 1)
	serveTCP(t, server, 8081, func(c net.Conn) {
		req, _ := io.ReadAll(io.LimitReader(c, 17))
		got <- string(req)
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"))
	})
	mesh(t, client, writeDiscovery(t, "trustDomain: cluster.local\nservices: []\n"))
	c := dial(t, client.NS, netip.AddrPortFrom(server.IPv4, 8081))
	c.Write([]byte("GET /x HTTP/1.1\r\nHost: h\r\n\r\n"))
	select {
	case r := <-got:
		if r != "GET /x HTTP/1.1\r\n" {
			t.Fatalf("the server received %q", r)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the request did not reach its original destination")
	}
}

// TestAdminAndMetrics: the admin port answers, and gRPC traffic shows in the metrics of both
// proxies with its status codes.
func TestAdminAndMetrics(t *testing.T) {
	c := newStockCluster(t, 1, nil)
	client, replicas := c.mesh(t)
	cc := grpcClientIn(t, c.client.NS, c.vip4.String())
	sc := stockpb.NewStockDataClient(cc)
	for range 5 {
		if _, err := sc.GetQuote(context.Background(), &stockpb.QuoteRequest{Symbol: "ACME"}); err != nil {
			t.Fatal(err)
		}
	}
	sc.GetQuote(context.Background(), &stockpb.QuoteRequest{Symbol: "NOPE"})

	ep := netip.AddrPortFrom(c.replicas[0].IPv4, 8080).String()
	for _, tt := range []struct {
		pod  *meshPod
		path string
		want []string
	}{
		{client, "/live", []string{`"status": "live"`}},
		{client, "/ready", []string{`"ready": true`}},
		{client, "/metrics", []string{
			fmt.Sprintf(`detour_responses_total{authority="stockdata.stocks",classification="success",direction="outbound",endpoint="%s",grpc_status="0",peer_identity="",status_code="200",tls="false"} 5`, ep),
			fmt.Sprintf(`detour_responses_total{authority="stockdata.stocks",classification="failure",direction="outbound",endpoint="%s",grpc_status="5",peer_identity="",status_code="200",tls="false"} 1`, ep),
			`detour_response_latency_seconds_bucket{authority="stockdata.stocks",direction="outbound"`,
			`detour_tcp_open_connections{direction="outbound",protocol="http2"} 1`,
			`detour_protocol_detections_total{direction="outbound",port="80",result="http2"} 1`,
		}},
		{replicas[0], "/metrics", []string{
			`detour_responses_total{authority="` + ep + `",classification="success",direction="inbound",endpoint="` + ep + `",grpc_status="0",peer_identity="",status_code="200",tls="false"} 5`,
		}},
		{client, "/debug/endpoints", []string{`"name": "stockdata.stocks"`, `"address": "` + ep + `"`}},
		{client, "/debug/connections", []string{`"direction": "outbound"`, `"service": "stockdata.stocks"`, `"protocol": "http2"`}},
	} {
		code, body := tt.pod.admin(t, tt.path)
		if code != http.StatusOK {
			t.Errorf("%s %s: %d %s", tt.pod.Name, tt.path, code, body)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s %s lacks %s", tt.pod.Name, tt.path, w)
			}
		}
		if strings.HasPrefix(tt.path, "/debug") {
			var v any
			if err := json.Unmarshal([]byte(body), &v); err != nil {
				t.Errorf("%s is not JSON: %v", tt.path, err)
			}
		}
	}
}

// TestDrainOnSIGTERM: the inbound side stops taking connections, the outbound side keeps
// serving while a connection is open, until the drain timeout, then the proxy exits 0.
func TestDrainOnSIGTERM(t *testing.T) {
	topo := nstest.Topology(t)
	pod, peer := addPod(t, topo, "pod"), addPod(t, topo, "peer")
	serveTCP(t, peer, 9000, echo)
	serveTCP(t, pod, 9000, echo)
	m := mesh(t, pod, "", "--drain-timeout", "2s")
	held := dial(t, pod.NS, netip.AddrPortFrom(peer.IPv4, 9000)) // open past the drain timeout
	roundTrip(t, held)
	m.proxy.Process.Signal(syscall.SIGTERM)
	m.waitDraining(t)
	// Outbound still works during the drain.
	c := dial(t, pod.NS, netip.AddrPortFrom(peer.IPv4, 9000))
	roundTrip(t, c)
	c.Close()
	// Inbound is refused.
	var err error
	peer.NS.Do(func() error {
		var ic net.Conn
		ic, err = net.DialTimeout("tcp", netip.AddrPortFrom(pod.IPv4, 9000).String(), time.Second)
		if err == nil {
			ic.Close()
		}
		return nil
	})
	if err == nil {
		t.Fatal("an inbound connection was accepted during the drain")
	}
	select {
	case err := <-m.exited:
		m.exited <- err
		if err != nil {
			t.Fatalf("proxy exit: %v\n%s", err, m.log)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy did not exit after its drain timeout")
	}
}

// TestDrainEndsWithTheLastConnection: a drain ends as soon as no client connection is left,
// not at the drain timeout, so a pod's grace period never has to outlast it; an open outbound
// connection is served until it ends.
func TestDrainEndsWithTheLastConnection(t *testing.T) {
	topo := nstest.Topology(t)
	// The drain timeout is far beyond every wait below: an exit within them is the drain
	// ending by itself.
	const drain = "60s"
	exit := func(t *testing.T, m *meshPod) {
		t.Helper()
		select {
		case err := <-m.exited:
			m.exited <- err
			if err != nil {
				t.Fatalf("proxy exit: %v\n%s", err, m.log)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the proxy did not exit with no connection left (drain timeout %s)", drain)
		}
	}
	t.Run("SIGTERM with no connection exits at once", func(t *testing.T) {
		m := mesh(t, addPod(t, topo, "idle"), "", "--drain-timeout", drain)
		m.proxy.Process.Signal(syscall.SIGTERM)
		exit(t, m)
	})
	t.Run("an open outbound connection is waited for, then the proxy exits", func(t *testing.T) {
		pod, peer := addPod(t, topo, "busy"), addPod(t, topo, "peer")
		serveTCP(t, peer, 9000, echo)
		m := mesh(t, pod, "", "--drain-timeout", drain)
		c := dial(t, pod.NS, netip.AddrPortFrom(peer.IPv4, 9000))
		roundTrip(t, c)
		m.proxy.Process.Signal(syscall.SIGTERM)
		m.waitDraining(t)
		roundTrip(t, c) // served after the drain began
		select {
		case err := <-m.exited:
			t.Fatalf("the proxy exited (%v) while an outbound connection was open", err)
		default:
		}
		c.Close()
		exit(t, m)
	})
}

// roundTrip sends a byte over c to an echo server and reads it back.
func roundTrip(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("write: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("read the echo: %v", err)
	}
}

// TestShutdownEndpoint: POST /shutdown from loopback drains, from elsewhere it is refused.
func TestShutdownEndpoint(t *testing.T) {
	topo := nstest.Topology(t)
	pod, other := addPod(t, topo, "pod"), addPod(t, topo, "other")
	m := mesh(t, pod, "", "--drain-timeout", "100ms")
	post := func(ns *netns.NS, host netip.Addr) int {
		resp, err := httpClientIn(ns).Post(fmt.Sprintf("http://%s/shutdown", netip.AddrPortFrom(host, 7190)), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(other.NS, pod.IPv4); code != http.StatusForbidden {
		t.Fatalf("/shutdown from another pod: %d, want 403", code)
	}
	if code := post(pod.NS, netip.MustParseAddr("127.0.0.1")); code != http.StatusAccepted {
		t.Fatalf("/shutdown from loopback: %d, want 202", code)
	}
	select {
	case err := <-m.exited:
		m.exited <- err
		if err != nil {
			t.Fatalf("proxy exit: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy did not exit after /shutdown")
	}
}

// TestAdminDebugIsForLoopback: /live, /ready and /metrics answer the node (the kubelet) and
// other pods (Prometheus) at the pod address; /debug/* and /shutdown answer only callers on the
// pod's loopback, where the debugging CLI enters the pod's namespace.
func TestAdminDebugIsForLoopback(t *testing.T) {
	topo := nstest.Topology(t)
	pod, other := addPod(t, topo, "pod"), addPod(t, topo, "other")
	mesh(t, pod, writeDiscovery(t, stockDiscovery(netip.MustParseAddrPort("198.19.0.10:80"), netip.MustParseAddrPort("[fd00:de71::10]:80"), []*netns.Pod{other})))
	get := func(ns *netns.NS, host netip.Addr, path string) int {
		t.Helper()
		code, body := adminAt(ns, netip.AddrPortFrom(host, 7190), path)
		if code == 0 {
			t.Fatalf("GET %s from %s: %s", path, ns.Name, body)
		}
		return code
	}
	for _, from := range []struct {
		name string
		ns   *netns.NS
		host netip.Addr
	}{{"another pod", other.NS, pod.IPv4}, {"another pod over IPv6", other.NS, pod.IPv6}, {"the node", topo.Node, pod.IPv4}} {
		t.Run("from "+from.name, func(t *testing.T) {
			for _, path := range []string{"/live", "/ready", "/metrics"} {
				if code := get(from.ns, from.host, path); code != http.StatusOK {
					t.Errorf("%s: %d, want 200", path, code)
				}
			}
			for _, path := range []string{"/debug/endpoints", "/debug/connections", "/debug/nonexistent"} {
				if code := get(from.ns, from.host, path); code != http.StatusForbidden {
					t.Errorf("%s: %d, want 403", path, code)
				}
			}
		})
	}
	t.Run("from the pod's own address, not loopback", func(t *testing.T) {
		if code := get(pod.NS, pod.IPv4, "/debug/endpoints"); code != http.StatusForbidden {
			t.Errorf("/debug/endpoints: %d, want 403", code)
		}
	})
	for _, lo := range []netip.Addr{loopback4, loopback6} {
		t.Run("from loopback "+lo.String()+" in the pod", func(t *testing.T) {
			for _, path := range []string{"/debug/endpoints", "/debug/connections", "/metrics", "/ready"} {
				if code := get(pod.NS, lo, path); code != http.StatusOK {
					t.Errorf("%s: %d, want 200", path, code)
				}
			}
		})
	}
}

// TestConnectionLimit: past --max-connections the proxy resets new connections at once,
// counts them and logs once, and keeps serving the ones it holds; a freed place is taken again.
func TestConnectionLimit(t *testing.T) {
	topo := nstest.Topology(t)
	pod, peer := addPod(t, topo, "pod"), addPod(t, topo, "peer")
	serveTCP(t, peer, 9000, echo)
	m := mesh(t, pod, "", "--max-connections", "3")
	dst := netip.AddrPortFrom(peer.IPv4, 9000)
	held := make([]net.Conn, 3)
	for i := range held {
		held[i] = dial(t, pod.NS, dst)
		roundTrip(t, held[i])
	}
	const extra = 5
	for i := range extra {
		if echoes(t, pod.NS, dst) {
			t.Fatalf("connection %d past the limit of 3 was served", i+1)
		}
	}
	for _, c := range held {
		roundTrip(t, c) // the connections within the limit are still served
	}
	_, metrics := m.admin(t, "/metrics")
	if got := metricValue(metrics, `detour_tcp_connections_refused_total{direction="outbound",reason="limit"}`); got != extra {
		t.Errorf("refused connections counted: %v, want %d", got, extra)
	}
	m.waitLog(t, "connections refused: the proxy serves its limit")
	if n := strings.Count(m.log.String(), "connections refused"); n != 1 {
		t.Errorf("%d log lines for %d refusals within 10 s, want 1", n, extra)
	}
	held[0].Close()
	for deadline := time.Now().Add(5 * time.Second); !echoes(t, pod.NS, dst); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no connection served after one of the three ended")
		}
	}
}

// TestGoneEndpointsLeaveTheMetrics: the series of an endpoint that left discovery are deleted
// after --metrics-retain, those of the endpoints still in it stay and keep counting.
func TestGoneEndpointsLeaveTheMetrics(t *testing.T) {
	c := newStockCluster(t, 2, nil)
	path := writeDiscovery(t, stockDiscovery(c.vip4, c.vip6, c.replicas))
	client := mesh(t, c.client, path, "--metrics-retain", "1s")
	cc := grpcClientIn(t, c.client.NS, c.vip4.String())
	got := callConcurrently(t, cc, 40)
	if got[c.replicas[0].Name] == 0 || got[c.replicas[1].Name] == 0 {
		t.Fatalf("calls before the rollout: %v", got)
	}
	gone, kept := netip.AddrPortFrom(c.replicas[1].IPv4, 8080), netip.AddrPortFrom(c.replicas[0].IPv4, 8080)
	series := func(ep netip.AddrPort) int {
		_, metrics := client.admin(t, "/metrics")
		return strings.Count(metrics, `endpoint="`+ep.String()+`"`)
	}
	if series(gone) == 0 {
		t.Fatal("no series of the endpoint about to go")
	}
	if err := os.WriteFile(path+".new", []byte(stockDiscovery(c.vip4, c.vip6, c.replicas[:1])), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); series(gone) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the series of %s, gone from discovery, are still in /metrics", gone)
		}
	}
	if n := callConcurrently(t, cc, 10); n[c.replicas[0].Name] != 10 {
		t.Fatalf("calls after the rollout: %v", n)
	}
	// The endpoint that stayed kept its counter: monotonic across the rollout.
	_, metrics := client.admin(t, "/metrics")
	ok := fmt.Sprintf(`detour_responses_total{authority="stockdata.stocks",classification="success",direction="outbound",endpoint="%s",grpc_status="0",peer_identity="",status_code="200",tls="false"}`, kept)
	if v := metricValue(metrics, ok); v != float64(got[c.replicas[0].Name]+10) {
		t.Errorf("%s = %v, want %d", ok, v, got[c.replicas[0].Name]+10)
	}
}

// TestDiscoveryReloadUnderLoad: a replica added to the discovery file starts taking calls on
// the same client connection, and no call fails during the reload.
func TestDiscoveryReloadUnderLoad(t *testing.T) {
	c := newStockCluster(t, 2, nil)
	path := writeDiscovery(t, stockDiscovery(c.vip4, c.vip6, c.replicas[:1]))
	mesh(t, c.client, path)
	mesh(t, c.replicas[0], "")
	mesh(t, c.replicas[1], "")
	cc := grpcClientIn(t, c.client.NS, c.vip4.String())
	if got := callConcurrently(t, cc, 20); got[c.replicas[0].Name] != 20 {
		t.Fatalf("before the reload: %v", got)
	}
	if err := os.WriteFile(path+".new", []byte(stockDiscovery(c.vip4, c.vip6, c.replicas)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := callConcurrently(t, cc, 20) // fails the test on any failed call
		if got[c.replicas[1].Name] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new replica never got a call: %v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestProxyRefusesBadConfiguration: invalid settings are a clear error at start, from flags
// and from the environment alike.
func TestProxyRefusesBadConfiguration(t *testing.T) {
	ns := nstest.New(t)
	bad := writeDiscovery(t, "trustDomain: cluster.local\nservices:\n  - name: a.b\n    addresses: [\"198.19.0.1:80\"]\n    colour: blue\n")
	for _, tt := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"a missing discovery file", nil, []string{"--discovery", "file:/nonexistent/discovery.yaml"}, "no such file"},
		{"an unknown discovery source", nil, []string{"--discovery", "consul:x"}, "want file:PATH"},
		{"an unknown field in the discovery file, with its line", nil, []string{"--discovery", "file:" + bad}, "discovery.yaml:5"},
		{"a bad opaque port", nil, []string{"--opaque-ports", "0"}, "--opaque-ports"},
		{"negative cores", nil, []string{"--cores", "-1"}, "--cores"},
		{"a bad log level from the environment", []string{"DETOUR_LOG_LEVEL=loud"}, nil, "--log-level"},
		{"a bad port from the environment", []string{"DETOUR_ADMIN_PORT=99999"}, nil, "DETOUR_ADMIN_PORT"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := detour(t, ns, func(c *osexec.Cmd) { c.Env = append(os.Environ(), tt.env...) }, append([]string{"proxy"}, tt.args...)...)
			if r.err == nil || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %v, stderr %q: want a failure mentioning %q", r.err, r.stderr, tt.want)
			}
		})
	}
}

// TestProxyRuntimeSettings: the proxy runs Go code on one core and collects garbage at 50 %
// growth unless told otherwise, as its /metrics shows; --cores or DETOUR_CORES changes the
// first, and so does GOMAXPROCS when neither is given.
func TestProxyRuntimeSettings(t *testing.T) {
	topo := nstest.Topology(t)
	for _, tt := range []struct {
		pod   string
		env   string // DETOUR_PROXY_ENV: the proxy's extra environment
		flags []string
		want  string
	}{
		{"defaults", "", nil, "go_sched_gomaxprocs_threads 1\n"},
		{"cores-2", "", []string{"--cores", "2"}, "go_sched_gomaxprocs_threads 2\n"},
		{"env-cores-2", "DETOUR_CORES=2", nil, "go_sched_gomaxprocs_threads 2\n"},
		{"gomaxprocs-2", "GOMAXPROCS=2", nil, "go_sched_gomaxprocs_threads 2\n"},
		{"flag-over-gomaxprocs", "GOMAXPROCS=2", []string{"--cores", "1"}, "go_sched_gomaxprocs_threads 1\n"},
	} {
		t.Run(tt.pod, func(t *testing.T) {
			t.Setenv("DETOUR_PROXY_ENV", tt.env)
			m := mesh(t, addPod(t, topo, tt.pod), "", tt.flags...)
			_, metrics := m.admin(t, "/metrics")
			for _, want := range []string{tt.want, "go_gc_gogc_percent 50\n"} {
				if !strings.Contains(metrics, want) {
					t.Errorf("/metrics lacks %q", want)
				}
			}
		})
	}
}
