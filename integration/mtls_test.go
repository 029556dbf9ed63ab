package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/examples/stockkube/stockpb"
	"github.com/detourmesh/detour/internal/syncbuf"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
	"github.com/detourmesh/detour/spiffe"
)

var nstestTopology = nstest.Topology

// meshCA is a controller pod with its CA, bootstrap tokens and discovery file.
type meshCA struct {
	pod     *netns.Pod
	dir     string // world-readable: the proxies run as their own UID
	anchor  string // ca.crt
	disc    string // discovery file the controller serves
	tokens  map[string]string
	ttl     time.Duration
	ctrl    *exec.Cmd
	exited  chan error
	ctrlLog *syncbuf.Buffer
}

// newMeshCA makes the controller pod, its CA and an empty discovery file; start the
// controller with start once tokens and services are in.
func newMeshCA(t testing.TB, topo *netns.Topology, ttl time.Duration) *meshCA {
	t.Helper()
	m := &meshCA{pod: addPod(t, topo, "controller"), tokens: map[string]string{}, ttl: ttl}
	dir, err := os.MkdirTemp("", "detour-mesh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	m.dir = dir
	ca := filepath.Join(dir, "ca")
	if out, err := exec.Command(controllerBin, "ca", "init", "--dir", ca, "--trust-domain", "cluster.local").CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	// The trust anchor is public; the proxies read a copy.
	anchor, err := os.ReadFile(filepath.Join(ca, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	m.anchor = filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(m.anchor, anchor, 0o644); err != nil {
		t.Fatal(err)
	}
	m.disc = filepath.Join(dir, "discovery.yaml")
	return m
}

// token registers identity and returns the path of a file holding its bootstrap token.
func (m *meshCA) token(t testing.TB, identity string) string {
	t.Helper()
	b := make([]byte, 16)
	rand.Read(b)
	tok := hex.EncodeToString(b)
	m.tokens[tok] = identity
	path := filepath.Join(m.dir, fmt.Sprintf("token-%d", len(m.tokens)))
	if err := os.WriteFile(path, []byte(tok), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func (m *meshCA) addr() string { return netip.AddrPortFrom(m.pod.IPv4, 7086).String() }

// start runs the controller in its pod, serving the discovery file written with yaml.
func (m *meshCA) start(t testing.TB, yaml string) {
	t.Helper()
	if err := os.WriteFile(m.disc, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	var lines strings.Builder
	for tok, id := range m.tokens {
		fmt.Fprintf(&lines, "%s %s\n", tok, id)
	}
	tokens := filepath.Join(m.dir, "ca", "tokens")
	if err := os.WriteFile(tokens, []byte(lines.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	m.ctrlLog = &syncbuf.Buffer{}
	m.ctrl = exec.Command(controllerBin, "--source", "file:"+m.disc, "--listen", ":7086",
		"--ca-dir", filepath.Join(m.dir, "ca"), "--tokens", tokens, "--cert-ttl", m.ttl.String())
	m.ctrl.Stdout, m.ctrl.Stderr = m.ctrlLog, m.ctrlLog
	if err := m.pod.NS.Start(m.ctrl); err != nil {
		t.Fatal(err)
	}
	m.exited = make(chan error, 1)
	cmd, exited := m.ctrl, m.exited
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("controller log:\n%s", m.ctrlLog)
		}
	})
}

// stop ends the controller.
func (m *meshCA) stop(t testing.TB) {
	t.Helper()
	m.ctrl.Process.Kill()
	err := <-m.exited
	m.exited <- err
}

// meshFlags are the proxy flags that give it identity and discovery from the controller.
func (m *meshCA) meshFlags(t testing.TB, identity string) []string {
	return []string{"--discovery", "controller:" + m.addr(), "--identity", identity,
		"--trust-anchor", m.anchor, "--identity-token", m.token(t, identity)}
}

// meshWithIdentity installs the redirect in pod and starts its proxy with flags (built with
// meshFlags before the controller started).
func meshWithIdentity(t testing.TB, pod *netns.Pod, flags []string) *meshPod {
	t.Helper()
	return mesh(t, pod, "", flags...)
}

func spiffeID(ns, sa string) string { return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa) }

// stockDiscoveryWithIdentity is the StockData service at vip with the replicas as meshed
// endpoints proving identity.
func stockDiscoveryWithIdentity(vip netip.AddrPort, pods []*netns.Pod, identity string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "trustDomain: cluster.local\nservices:\n  - name: stockdata.stocks\n    addresses: [%q]\n    endpoints:\n", vip.String())
	for _, p := range pods {
		fmt.Fprintf(&b, "      - address: %q\n        identity: %s\n", netip.AddrPortFrom(p.IPv4, 8080).String(), identity)
	}
	return b.String()
}

// TestMutualTLSBetweenMeshedPods: calls between meshed pods are mutual TLS on the wire, the
// server knows who calls, and policy decides who may.
func TestMutualTLSBetweenMeshedPods(t *testing.T) {
	topo := nstestTopology(t)
	ca := newMeshCA(t, topo, 24*time.Hour)
	client, server, plain := addPod(t, topo, "client"), addPod(t, topo, "server"), addPod(t, topo, "plain")
	webID, stockID := spiffeID("web", "stockweb"), spiffeID("stocks", "stockdata")
	for port, id := range map[uint16]string{8080: "permissive", 8081: "strict", 8082: "allow-list", 8083: "announced-as-impostor"} {
		serveStockDataOn(t, server, port, id, 0)
	}
	vip := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + i)}), 80)
	}
	svc := func(i int, port uint16, identity string) string {
		return fmt.Sprintf("  - name: s%d.stocks\n    addresses: [%q]\n    endpoints:\n      - address: %q\n        identity: %s\n",
			i, vip(i).String(), netip.AddrPortFrom(server.IPv4, port).String(), identity)
	}
	clientFlags := ca.meshFlags(t, webID)
	// The client is given its trust anchor as PEM text, as the injector does.
	anchorPEM, err := os.ReadFile(ca.anchor)
	if err != nil {
		t.Fatal(err)
	}
	for i := range clientFlags {
		if clientFlags[i] == "--trust-anchor" {
			clientFlags[i], clientFlags[i+1] = "--trust-anchor-pem", string(anchorPEM)
		}
	}
	serverFlags := append(ca.meshFlags(t, stockID), "--port-policy", "8081=strict",
		"--allow", "8082="+spiffeID("web", "someone-else"), "--probe-paths", "8081"+"/grpc.health.v1.Health/Check")
	ca.start(t, "trustDomain: cluster.local\nservices:\n"+
		svc(0, 8080, stockID)+svc(1, 8081, stockID)+svc(2, 8082, stockID)+svc(3, 8083, spiffeID("stocks", "impostor")))
	srv := meshWithIdentity(t, server, serverFlags)
	cli := meshWithIdentity(t, client, clientFlags)

	marker := []byte("MARKER-" + hex.EncodeToString([]byte(t.Name()))[:16])
	call := func(ns *netns.NS, target netip.AddrPort) (string, error) {
		sc := stockpb.NewStockDataClient(grpcClientIn(t, ns, target.String()))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q, err := sc.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME", Padding: marker})
		if err != nil {
			return "", err
		}
		return q.Server, nil
	}

	t.Run("meshed calls are encrypted on the wire and the server knows the caller", func(t *testing.T) {
		wire := startCapture(t, topo.Node)
		if got, err := call(client.NS, vip(0)); err != nil || got != "permissive" {
			t.Fatalf("call through the mesh: %q, %v", got, err)
		}
		if bytes := wire.stop(); bytes == nil || wire.saw(marker) {
			t.Fatalf("the marker crossed the bridge in clear (%d bytes captured)", len(bytes))
		}
		_, conns := srv.admin(t, "/debug/connections")
		if !strings.Contains(conns, `"peer_identity": "`+webID+`"`) {
			t.Errorf("the server proxy does not show the client's identity:\n%s", conns)
		}
		_, metrics := srv.admin(t, "/metrics")
		if !strings.Contains(metrics, `peer_identity="`+webID+`",status_code="200",tls="true"`) {
			t.Errorf("inbound metrics lack tls and the peer identity")
		}
		_, metrics = cli.admin(t, "/metrics")
		if !strings.Contains(metrics, `peer_identity="`+stockID+`",status_code="200",tls="true"`) {
			t.Errorf("outbound metrics lack tls and the server identity")
		}
		if code, body := cli.admin(t, "/debug/identity"); code != 200 || !strings.Contains(body, webID) {
			t.Errorf("/debug/identity: %d %s", code, body)
		}
	})
	t.Run("the control run: an unmeshed client is plaintext on the wire, accepted in permissive mode", func(t *testing.T) {
		wire := startCapture(t, topo.Node)
		if got, err := call(plain.NS, netip.AddrPortFrom(server.IPv4, 8080)); err != nil || got != "permissive" {
			t.Fatalf("plaintext call: %q, %v", got, err)
		}
		wire.stop()
		if !wire.saw(marker) {
			t.Fatal("the marker of a plaintext call was not seen on the bridge: the capture cannot tell")
		}
	})
	t.Run("strict mode refuses plaintext and accepts mesh TLS", func(t *testing.T) {
		if _, err := call(plain.NS, netip.AddrPortFrom(server.IPv4, 8081)); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("plaintext to a strict port: %v, want PermissionDenied", err)
		}
		if got, err := call(client.NS, vip(1)); err != nil || got != "strict" {
			t.Fatalf("mesh TLS to a strict port: %q, %v", got, err)
		}
	})
	t.Run("a kubelet probe path reaches a strict port in plaintext, nothing else does", func(t *testing.T) {
		cc := grpcClientIn(t, plain.NS, netip.AddrPortFrom(server.IPv4, 8081).String())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("plaintext gRPC health check of a strict port with it as a probe path: %v, %v", resp, err)
		}
		if _, err := stockpb.NewStockDataClient(cc).GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME"}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("plaintext call beside the probe path: %v, want PermissionDenied", err)
		}
	})
	t.Run("an identity not on the allow-list is denied and counted", func(t *testing.T) {
		_, err := call(client.NS, vip(2))
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), webID) {
			t.Fatalf("caller off the allow-list: %v, want PermissionDenied naming %s", err, webID)
		}
		_, metrics := srv.admin(t, "/metrics")
		if !strings.Contains(metrics, `detour_authz_denials_total{direction="inbound",peer_identity="`+webID+`",port="8082"}`) {
			t.Errorf("the denial was not counted")
		}
		srv.waitLog(t, "denied by policy")
	})
	t.Run("a server proving another identity than discovery announced is refused", func(t *testing.T) {
		_, err := call(client.NS, vip(3))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "impostor") {
			t.Fatalf("call to an endpoint announced as another identity: %v, want Unavailable naming it", err)
		}
	})
}

// steadyLoad is steady gRPC load: GetQuote calls over one client connection, one at a time from each
// of a few callers, until stopped, or at most a bounded number of calls or time (whichever
// ends first; the waits below then fail rather than pass on a load that has ended).
type steadyLoad struct {
	ok    atomic.Int64 // calls that succeeded so far
	mu    sync.Mutex
	errs  []error
	stop  chan struct{}
	ended chan struct{}
}

// startLoad starts workers callers on cc, making at most limit calls in all.
func startLoad(t *testing.T, cc stockpb.StockDataClient, workers, limit int) *steadyLoad {
	l := &steadyLoad{stop: make(chan struct{}), ended: make(chan struct{})}
	var made atomic.Int64
	deadline := time.Now().Add(2 * time.Minute)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for made.Add(1) <= int64(limit) && time.Now().Before(deadline) {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := cc.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "BOLT"})
				cancel()
				if err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, err)
					l.mu.Unlock()
				} else {
					l.ok.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	go func() { wg.Wait(); close(l.ended) }()
	t.Cleanup(func() { l.end() })
	return l
}

// waitCalls waits until n more calls than mark have succeeded (mark: l.ok.Load() at the event
// they must follow), failing the test if the load ends first or takes more than 30 s.
func (l *steadyLoad) waitCalls(t *testing.T, mark int64, n int, what string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for l.ok.Load() < mark+int64(n) {
		select {
		case <-l.ended:
			if l.ok.Load() < mark+int64(n) {
				t.Fatalf("the load ended with %d calls %s, want %d", l.ok.Load()-mark, what, n)
			}
		case <-deadline:
			t.Fatalf("%d calls succeeded %s in 30 s, want %d (%d failed so far)", l.ok.Load()-mark, what, n, len(l.failures()))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// end stops the load and waits for its callers.
func (l *steadyLoad) end() (ok int64, errs []error) {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.ended
	return l.ok.Load(), l.failures()
}

func (l *steadyLoad) failures() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// serial reads the serial of a proxy's current certificate from /debug/identity.
func serial(t *testing.T, m *meshPod) string { return identityField(t, m, "serial") }

// identityField is one field of the proxy's /debug/identity document.
func identityField(t *testing.T, m *meshPod, field string) string {
	t.Helper()
	code, body := m.admin(t, "/debug/identity")
	if code != 200 {
		t.Fatalf("/debug/identity: %d %s", code, body)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	s, _ := doc[field].(string)
	if s == "" {
		t.Fatalf("/debug/identity has no %s: %s", field, body)
	}
	return s
}

// meshedStockPair is a client and a StockData server, both meshed with identities issued
// by a controller whose certificates live ttl.
func meshedStockPair(t *testing.T, ttl time.Duration) (ca *meshCA, client, server *meshPod, vip netip.AddrPort) {
	topo := nstestTopology(t)
	ca = newMeshCA(t, topo, ttl)
	c, s := addPod(t, topo, "client"), addPod(t, topo, "server")
	serveStockData(t, s, "server", 0)
	vip = netip.MustParseAddrPort("198.19.0.10:80")
	cf, sf := ca.meshFlags(t, spiffeID("web", "stockweb")), ca.meshFlags(t, spiffeID("stocks", "stockdata"))
	ca.start(t, stockDiscoveryWithIdentity(vip, []*netns.Pod{s}, spiffeID("stocks", "stockdata")))
	return ca, meshWithIdentity(t, c, cf), meshWithIdentity(t, s, sf), vip
}

// TestCertificateRotationUnderLoad: certificates living seconds are renewed under steady gRPC
// load without losing a call.
func TestCertificateRotationUnderLoad(t *testing.T) {
	_, client, server, vip := meshedStockPair(t, 3*time.Second)
	before := []string{serial(t, client), serial(t, server)}
	cc := stockpb.NewStockDataClient(grpcClientIn(t, client.NS, vip.String()))
	l := startLoad(t, cc, 4, 100000)
	l.waitCalls(t, 0, 20, "before the renewals")
	for i, m := range []*meshPod{client, server} {
		for deadline := time.Now().Add(15 * time.Second); serial(t, m) == before[i]; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the %s proxy's certificate was not renewed (serial %s)", m.Name, before[i])
			}
		}
	}
	l.waitCalls(t, l.ok.Load(), 50, "after both proxies renewed")
	ok, errs := l.end()
	if len(errs) > 0 {
		t.Fatalf("%d of %d calls failed during rotation, first: %v", len(errs), ok+int64(len(errs)), errs[0])
	}
	t.Logf("%d calls, serials %v -> %v", ok, before, []string{serial(t, client), serial(t, server)})
	// New handshakes use the new certificates: a fresh client connection still works.
	fresh := stockpb.NewStockDataClient(grpcClientIn(t, client.NS, vip.String()))
	if _, err := fresh.GetQuote(context.Background(), &stockpb.QuoteRequest{Symbol: "ACME"}); err != nil {
		t.Fatal(err)
	}
}

// TestIssuerRotationUnderLoad: `detour controller ca rotate-issuer` under steady gRPC load takes
// effect without restarting anything: the controller signs with the new issuer, both proxies
// renew onto it, and no call fails before, during or after.
func TestIssuerRotationUnderLoad(t *testing.T) {
	ca, client, server, vip := meshedStockPair(t, 3*time.Second)
	oldIssuer := identityField(t, client, "issuer_sha256")
	cc := stockpb.NewStockDataClient(grpcClientIn(t, client.NS, vip.String()))
	l := startLoad(t, cc, 4, 100000)
	l.waitCalls(t, 0, 20, "before the rotation")
	var report struct {
		Issuer struct {
			SHA256 string `json:"sha256"`
		} `json:"issuer"`
	}
	// Through `detour controller`, which runs detour-controller beside it with the same arguments.
	out := mustDetour(t, ca.pod.NS, "controller", "ca", "rotate-issuer", "--dir", filepath.Join(ca.dir, "ca"), "-o", "json")
	if err := json.Unmarshal([]byte(out), &report); err != nil || report.Issuer.SHA256 == "" || report.Issuer.SHA256 == oldIssuer {
		t.Fatalf("rotate-issuer printed %s (err %v); the old issuer was %s", out, err, oldIssuer)
	}
	rotated := l.ok.Load()
	deadline := time.Now().Add(15 * time.Second)
	for _, m := range []*meshPod{client, server} {
		for identityField(t, m, "issuer_sha256") != report.Issuer.SHA256 {
			if time.Now().After(deadline) {
				t.Fatalf("the %s proxy's certificate is still from issuer %s", m.Name, identityField(t, m, "issuer_sha256"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !strings.Contains(ca.ctrlLog.String(), "issuer rotated") {
		t.Errorf("the controller did not log the rotation:\n%s", ca.ctrlLog)
	}
	renewed := l.ok.Load()
	if renewed == rotated {
		t.Errorf("no call succeeded while the proxies renewed onto the new issuer")
	}
	l.waitCalls(t, renewed, 50, "after both proxies hold the new issuer's certificates")
	ok, errs := l.end()
	if len(errs) > 0 {
		t.Fatalf("%d of %d calls failed across the issuer rotation, first: %v", len(errs), ok+int64(len(errs)), errs[0])
	}
	t.Logf("%d calls across the rotation (%d before it, %d while the proxies renewed, %d after); issuer %.16s… -> %.16s…",
		ok, rotated, renewed-rotated, ok-renewed, oldIssuer, report.Issuer.SHA256)
}

// TestControllerRestartUnderLoad: while the controller is away, calls go on with the last
// endpoints and certificates; proxies reconnect when it is back.
func TestControllerRestartUnderLoad(t *testing.T) {
	ca, client, _, vip := meshedStockPair(t, time.Hour)
	cc := stockpb.NewStockDataClient(grpcClientIn(t, client.NS, vip.String()))
	l := startLoad(t, cc, 4, 100000)
	l.waitCalls(t, 0, 20, "before the controller stops")
	ca.stop(t)
	client.waitLog(t, "discovery stream from the controller lost") // the proxy knows it is away
	away := l.ok.Load()
	l.waitCalls(t, away, 50, "while the controller is away")
	if code, body := client.admin(t, "/ready"); code != 200 {
		t.Errorf("the proxy is not ready while the controller is away: %d %s", code, body)
	}
	// Back, with a change the proxy can only learn from the controller.
	ca.start(t, strings.Replace(mustRead(t, ca.disc), "        identity:", "        zone: after-restart\n        identity:", 1))
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, body := client.admin(t, "/debug/endpoints"); strings.Contains(body, "after-restart") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not reconnect to the restarted controller within 15s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	back := l.ok.Load()
	l.waitCalls(t, back, 50, "after the proxy reconnected")
	ok, errs := l.end()
	if len(errs) > 0 {
		t.Fatalf("%d of %d calls failed across the controller restart, first: %v", len(errs), ok+int64(len(errs)), errs[0])
	}
	t.Logf("%d calls across the restart (%d before it, %d while the controller was away, %d after)", ok, away, back-away, ok-back)
}

// TestStartsWhileTheControllerIsDown: a proxy whose controller is down when it starts does not
// hold the pod's traffic hostage: it listens at once and relays what it does not know to its
// original destination, says it is not ready while discovery is pending, and starts routing by
// the mesh once the controller comes up.
func TestStartsWhileTheControllerIsDown(t *testing.T) {
	topo := nstestTopology(t)
	ca := newMeshCA(t, topo, time.Hour)
	c, s, outside := addPod(t, topo, "client"), addPod(t, topo, "server"), addPod(t, topo, "outside")
	serveStockData(t, s, "server", 0)
	serveTCP(t, outside, 9000, echo) // no meshed pod, no service: outside the mesh
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	cf, sf := ca.meshFlags(t, spiffeID("web", "stockweb")), ca.meshFlags(t, spiffeID("stocks", "stockdata"))
	client := startMesh(t, c, "", cf...)
	server := startMesh(t, s, "", sf...)
	// The controller is not running. The proxy answers its admin port once it listens.
	client.waitAdmin(t, "/live", 10*time.Second)

	if !echoes(t, c.NS, netip.AddrPortFrom(outside.IPv4, 9000)) {
		t.Fatal("outbound TCP outside the mesh does not work while the controller is down")
	}
	if code, body := client.admin(t, "/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for discovery") {
		t.Fatalf("/ready with the controller down: %d %s, want 503 waiting for discovery", code, body)
	} else {
		t.Logf("/ready with the controller down: %d %s", code, body)
	}

	ca.start(t, stockDiscoveryWithIdentity(vip, []*netns.Pod{s}, spiffeID("stocks", "stockdata")))
	for _, m := range []*meshPod{client, server} {
		m.waitAdmin(t, "/ready", 30*time.Second) // the proxies retry with backoff
	}
	// The VIP exists only in discovery: a call reaches the server through the mesh, with
	// mutual TLS, or not at all.
	cc := stockpb.NewStockDataClient(grpcClientIn(t, c.NS, vip.String()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := cc.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME"})
	if err != nil || q.Server != "server" {
		t.Fatalf("a call through the mesh once the controller is up: %v, %v", q, err)
	}
	if _, conns := server.admin(t, "/debug/connections"); !strings.Contains(conns, `"peer_identity": "`+spiffeID("web", "stockweb")+`"`) {
		t.Errorf("the server proxy holds no mutual TLS connection from the client:\n%s", conns)
	}
	if !echoes(t, c.NS, netip.AddrPortFrom(outside.IPv4, 9000)) {
		t.Fatal("outbound TCP outside the mesh stopped working once discovery arrived")
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAppTLSPassesThrough: an application's own TLS crosses the mesh untouched, to a known
// meshed service (inside mesh TLS) and to an unknown destination: the client sees the server
// application's certificate and its bytes come back exactly.
func TestAppTLSPassesThrough(t *testing.T) {
	topo := nstestTopology(t)
	ca := newMeshCA(t, topo, time.Hour)
	c, s := addPod(t, topo, "client"), addPod(t, topo, "server")
	appCert := selfSigned(t, "app.stocks")
	for _, ln := range listenAll(t, s, 9443) {
		tl := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{appCert}})
		go func() {
			for {
				conn, err := tl.Accept()
				if err != nil {
					return
				}
				go func() { defer conn.Close(); io.Copy(conn, conn) }()
			}
		}()
	}
	vip := netip.MustParseAddrPort("198.19.0.12:443")
	cf, sf := ca.meshFlags(t, spiffeID("web", "stockweb")), ca.meshFlags(t, spiffeID("stocks", "app"))
	ca.start(t, fmt.Sprintf("trustDomain: cluster.local\nservices:\n  - name: app.stocks\n    addresses: [%q]\n    endpoints:\n      - address: %q\n        identity: %s\n",
		vip.String(), netip.AddrPortFrom(s.IPv4, 9443).String(), spiffeID("stocks", "app")))
	meshWithIdentity(t, s, sf)
	meshWithIdentity(t, c, cf)
	for _, target := range []netip.AddrPort{vip, netip.AddrPortFrom(s.IPv4, 9443)} {
		t.Run(target.String(), func(t *testing.T) {
			raw := dial(t, c.NS, target)
			pool := x509.NewCertPool()
			pool.AddCert(appCert.Leaf)
			conn := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "app.stocks"})
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			if err := conn.Handshake(); err != nil {
				t.Fatalf("the app's own TLS handshake through the mesh: %v", err)
			}
			payload := make([]byte, 256<<10)
			rand.Read(payload)
			go conn.Write(payload)
			got := make([]byte, len(payload))
			if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("echo through the app's TLS: %v", err)
			}
		})
	}
}

// selfSigned makes an application's own certificate for name.
func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestDenialsByProtocol: a client off a port's allow-list gets 403 over HTTP and a closed
// connection over TCP; one on the list gets through.
func TestDenialsByProtocol(t *testing.T) {
	topo := nstestTopology(t)
	ca := newMeshCA(t, topo, time.Hour)
	allowed, denied, server := addPod(t, topo, "allowed"), addPod(t, topo, "denied"), addPod(t, topo, "server")
	serveHTTP(t, server, new(atomic.Int64))
	serveTCP(t, server, 9000, echo)
	allowedID, deniedID, serverID := spiffeID("web", "allowed"), spiffeID("web", "denied"), spiffeID("stocks", "server")
	httpVIP, tcpVIP := netip.MustParseAddrPort("198.19.0.30:80"), netip.MustParseAddrPort("198.19.0.31:9000")
	af, df := ca.meshFlags(t, allowedID), ca.meshFlags(t, deniedID)
	sf := append(ca.meshFlags(t, serverID), "--allow", fmt.Sprintf("8081=%s;9000=%s", allowedID, allowedID))
	svc := func(name string, vip netip.AddrPort, port uint16) string {
		return fmt.Sprintf("  - name: %s\n    addresses: [%q]\n    endpoints:\n      - address: %q\n        identity: %s\n",
			name, vip.String(), netip.AddrPortFrom(server.IPv4, port).String(), serverID)
	}
	ca.start(t, "trustDomain: cluster.local\nservices:\n"+svc("web.stocks", httpVIP, 8081)+svc("echo.stocks", tcpVIP, 9000))
	srv := meshWithIdentity(t, server, sf)
	meshWithIdentity(t, allowed, af)
	meshWithIdentity(t, denied, df)

	for _, tt := range []struct {
		pod        *netns.Pod
		wantHTTP   int
		wantEchoed bool
	}{{allowed, 200, true}, {denied, 403, false}} {
		t.Run(tt.pod.Name, func(t *testing.T) {
			resp, err := httpClientIn(tt.pod.NS).Get(fmt.Sprintf("http://%s/", httpVIP))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantHTTP {
				t.Errorf("HTTP through the mesh: %d %s, want %d", resp.StatusCode, body, tt.wantHTTP)
			}
			c := dial(t, tt.pod.NS, tcpVIP)
			c.Write([]byte("ping"))
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			got := make([]byte, 4)
			_, err = io.ReadFull(c, got)
			if echoed := err == nil && string(got) == "ping"; echoed != tt.wantEchoed {
				t.Errorf("TCP through the mesh: echoed %v (%q, %v), want %v", echoed, got, err, tt.wantEchoed)
			}
		})
	}
	_, metrics := srv.admin(t, "/metrics")
	for _, port := range []string{"8081", "9000"} {
		if !strings.Contains(metrics, `detour_authz_denials_total{direction="inbound",peer_identity="`+deniedID+`",port="`+port+`"}`) {
			t.Errorf("no denial counted on port %s", port)
		}
	}
}

// TestIdentityChangeRetiresPooledConnections: when discovery changes the identity an endpoint
// must prove, the next call is not sent over the connection checked against the old one.
func TestIdentityChangeRetiresPooledConnections(t *testing.T) {
	ca, client, _, vip := meshedStockPair(t, time.Hour)
	cc := stockpb.NewStockDataClient(grpcClientIn(t, client.NS, vip.String()))
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cc.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME"})
		return err
	}
	if err := call(); err != nil {
		t.Fatal(err)
	}
	announce := func(identity string) {
		t.Helper()
		yaml := mustRead(t, ca.disc)
		yaml = strings.Replace(yaml, spiffeID("stocks", "stockdata"), identity, 1)
		yaml = strings.Replace(yaml, spiffeID("stocks", "other"), identity, 1)
		if err := os.WriteFile(ca.disc, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, body := client.admin(t, "/debug/endpoints"); strings.Contains(body, identity) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the client proxy never learned that the endpoint is %s", identity)
			}
		}
	}
	// The server's proxy still proves stockdata, which is now the wrong identity.
	announce(spiffeID("stocks", "other"))
	if err := call(); status.Code(err) != codes.Unavailable {
		t.Fatalf("a call after the identity change: %v, want Unavailable (the pooled connection proved the old identity)", err)
	}
	client.waitLog(t, "pooled connections retired")
	announce(spiffeID("stocks", "stockdata"))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := call()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls still fail after the right identity is back: %v", err)
		}
	}
}

// TestControllerStreamNeedsACredential: a client in a pod that reaches the controller and
// verifies it, but proves no identity, learns nothing from discovery; the same client with a
// bootstrap token is served.
func TestControllerStreamNeedsACredential(t *testing.T) {
	topo := nstestTopology(t)
	ca := newMeshCA(t, topo, time.Hour)
	pod := addPod(t, topo, "client")
	tokenFile := ca.token(t, spiffeID("web", "stockweb"))
	ca.start(t, stockDiscoveryWithIdentity(netip.MustParseAddrPort("198.19.0.10:80"), []*netns.Pod{pod}, spiffeID("stocks", "stockdata")))

	anchors, err := spiffe.LoadTrustAnchors(ca.anchor)
	if err != nil {
		t.Fatal(err)
	}
	td, err := spiffe.TrustDomainOf(anchors[0])
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+ca.addr(),
		grpc.WithTransportCredentials(credentials.NewTLS(spiffe.ClientTLS(spiffe.Pool(anchors), spiffe.ControllerID(td), nil))),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return pod.NS.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	client := discoverypb.NewDiscoveryClient(cc)
	// watch returns the first response or the error, waiting while the controller starts.
	watch := func(ctx context.Context) (*discoverypb.DiscoveryResponse, error) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			stream, err := client.Stream(cctx)
			var pb *discoverypb.DiscoveryResponse
			if err == nil {
				err = stream.Send(&discoverypb.DiscoveryRequest{})
			}
			if err == nil || err == io.EOF {
				pb, err = stream.Recv()
			}
			cancel()
			if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
				return pb, err
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	pb, err := watch(context.Background())
	if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "--identity-token") {
		t.Fatalf("Stream without a credential: %v (%d services), want Unauthenticated saying what to present", err, len(pb.GetTable().GetServices()))
	}
	refusal := "peer=" + pod.IPv4.String() + ":"
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if logged := ca.ctrlLog.String(); strings.Contains(logged, "discovery stream refused") && strings.Contains(logged, refusal) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the controller did not log the refusal with the client's address %s:\n%s", pod.IPv4, ca.ctrlLog)
		}
	}

	// The control run: the same client, over the same TLS, with a bootstrap token.
	token := strings.TrimSpace(mustRead(t, tokenFile))
	pb, err = watch(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token))
	if err != nil || len(pb.GetTable().GetServices()) != 1 || pb.Table.Services[0].Name != "stockdata.stocks" {
		t.Fatalf("Stream with a token: %v, %v; want the discovery file's table", pb, err)
	}
}
