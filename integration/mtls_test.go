package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/examples/stockkube/stockpb"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
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
	ctrlLog *syncBuffer
}

// newMeshCA makes the controller pod, its CA and an empty discovery file; start the
// controller with start once tokens and services are in.
func newMeshCA(t *testing.T, topo *netns.Topology, ttl time.Duration) *meshCA {
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
	if out, err := exec.Command(detourBin, "controller", "ca", "init", "--dir", ca, "--trust-domain", "cluster.local").CombinedOutput(); err != nil {
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
func (m *meshCA) token(t *testing.T, identity string) string {
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
func (m *meshCA) start(t *testing.T, yaml string) {
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
	m.ctrlLog = &syncBuffer{}
	m.ctrl = exec.Command(detourBin, "controller", "--source", "file:"+m.disc, "--listen", ":7086",
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
func (m *meshCA) stop(t *testing.T) {
	t.Helper()
	m.ctrl.Process.Kill()
	err := <-m.exited
	m.exited <- err
}

// meshFlags are the proxy flags that give it identity and discovery from the controller.
func (m *meshCA) meshFlags(t *testing.T, identity string) []string {
	return []string{"--discovery", "controller:" + m.addr(), "--identity", identity,
		"--trust-anchor", m.anchor, "--identity-token", m.token(t, identity)}
}

// meshWithIdentity installs the redirect in pod and starts its proxy with flags (built with
// meshFlags before the controller started).
func meshWithIdentity(t *testing.T, pod *netns.Pod, flags []string) *meshPod {
	t.Helper()
	return mesh(t, pod, "", flags...)
}

func spiffe(ns, sa string) string { return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa) }

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
	webID, stockID := spiffe("web", "stockweb"), spiffe("stocks", "stockdata")
	for port, id := range map[uint16]string{8080: "permissive", 8081: "strict", 8082: "allow-list", 8083: "announced-as-impostor"} {
		serveStockDataOn(t, server, port, id, 0)
	}
	vip := func(i int) netip.AddrPort { return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + i)}), 80) }
	svc := func(i int, port uint16, identity string) string {
		return fmt.Sprintf("  - name: s%d.stocks\n    addresses: [%q]\n    endpoints:\n      - address: %q\n        identity: %s\n",
			i, vip(i).String(), netip.AddrPortFrom(server.IPv4, port).String(), identity)
	}
	clientFlags := ca.meshFlags(t, webID)
	serverFlags := append(ca.meshFlags(t, stockID), "--port-policy", "8081=strict",
		"--allow", "8082="+spiffe("web", "someone-else"))
	ca.start(t, "trustDomain: cluster.local\nservices:\n"+
		svc(0, 8080, stockID)+svc(1, 8081, stockID)+svc(2, 8082, stockID)+svc(3, 8083, spiffe("stocks", "impostor")))
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
