package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/detourmesh/detour/examples/stockkube/stockdata"
	"github.com/detourmesh/detour/internal/syncbuf"
	"github.com/detourmesh/detour/netns"
)

// proxyUID is the UID the proxy runs as in every test, as in a pod.
const proxyUID = 2102

// httpClientIn is an HTTP client whose connections start inside ns.
func httpClientIn(ns *netns.NS) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}}
}

// grpcClientIn opens one gRPC client connection from inside ns to target.
func grpcClientIn(t testing.TB, ns *netns.NS, target string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, "tcp", addr)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// serveStockData runs a StockData replica named id on port 8080 of pod, on every address.
func serveStockData(t testing.TB, pod *netns.Pod, id string, delay time.Duration) {
	t.Helper()
	serveStockDataOn(t, pod, 8080, id, delay)
}

// serveStockDataOn runs a StockData replica named id on port of pod, on every address.
func serveStockDataOn(t testing.TB, pod *netns.Pod, port uint16, id string, delay time.Duration) {
	t.Helper()
	var lns []net.Listener
	err := pod.NS.Do(func() error {
		for _, network := range []string{"tcp4", "tcp6"} {
			ln, err := net.Listen(network, fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	(&stockdata.Server{ID: id, Delay: delay}).Register(g)
	// The gRPC health service a kubelet grpc probe calls.
	healthpb.RegisterHealthServer(g, health.NewServer())
	for _, ln := range lns {
		go g.Serve(ln)
	}
	t.Cleanup(g.Stop)
}

// writeDiscovery writes a discovery file the proxy's UID can read and returns its path.
func writeDiscovery(t testing.TB, yaml string) string {
	t.Helper()
	// Not t.TempDir: its parent is private to root, and the proxy runs as its own UID.
	dir, err := os.MkdirTemp("", "detour-discovery-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "discovery.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// stockDiscovery is a discovery file with the StockData service twice: stockdata.stocks at
// vip4 with the replicas' IPv4 endpoints, stockdata6.stocks at vip6 with their IPv6 ones.
func stockDiscovery(vip4, vip6 netip.AddrPort, pods []*netns.Pod) string {
	var b strings.Builder
	b.WriteString("trustDomain: cluster.local\nservices:\n")
	for _, svc := range []struct {
		name string
		vip  netip.AddrPort
		addr func(*netns.Pod) netip.Addr
	}{{"stockdata.stocks", vip4, families[0].addr}, {"stockdata6.stocks", vip6, families[1].addr}} {
		fmt.Fprintf(&b, "  - name: %s\n    addresses: [%q]\n    endpoints:\n", svc.name, svc.vip.String())
		for _, p := range pods {
			fmt.Fprintf(&b, "      - address: %q\n", netip.AddrPortFrom(svc.addr(p), 8080).String())
		}
	}
	return b.String()
}

// meshPod is a pod with Detour's rules installed and its proxy running as the proxy UID.
type meshPod struct {
	*netns.Pod
	proxy  *exec.Cmd
	log    *syncbuf.Buffer
	exited chan error // receives the proxy's exit
}

// mesh installs the redirect in pod and starts its proxy with the given discovery file (""
// for none) and extra flags, and waits until the proxy is ready.
func mesh(t testing.TB, pod *netns.Pod, discoveryPath string, flags ...string) *meshPod {
	t.Helper()
	mp := startMesh(t, pod, discoveryPath, flags...)
	mp.waitReady(t)
	return mp
}

// startMesh is mesh without the wait for readiness.
func startMesh(t testing.TB, pod *netns.Pod, discoveryPath string, flags ...string) *meshPod {
	t.Helper()
	mustDetour(t, pod.NS, "init")
	args := []string{"proxy", "--log-level", "debug", "--drain-timeout", "200ms"}
	if discoveryPath != "" {
		args = append(args, "--discovery", "file:"+discoveryPath)
	}
	cmd := exec.Command(detourBin, append(args, flags...)...)
	if v := os.Getenv("DETOUR_PROXY_ENV"); v != "" {
		// Benchmarks of the proxy's runtime settings, e.g. DETOUR_PROXY_ENV="GOGC=50 GOMAXPROCS=1".
		cmd.Env = append(os.Environ(), strings.Fields(v)...)
	}
	netns.AsUID(cmd, proxyUID, proxyUID)
	return startProxyIn(t, pod, cmd)
}

// startProxyIn starts a proxy process (Detour's, or a reference proxy of the benchmark) in pod,
// its output kept in the returned meshPod's log and shown if the test fails, and ends it when
// the test does.
func startProxyIn(t testing.TB, pod *netns.Pod, cmd *exec.Cmd) *meshPod {
	t.Helper()
	log := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := pod.NS.Start(cmd); err != nil {
		t.Fatal(err)
	}
	mp := &meshPod{Pod: pod, proxy: cmd, log: log, exited: make(chan error, 1)}
	go func() { mp.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-mp.exited
		if t.Failed() {
			t.Logf("%s log of %s:\n%s", filepath.Base(cmd.Path), pod.Name, log)
		}
	})
	return mp
}

// admin GETs path from the proxy's admin port on the pod's loopback, as the debugging CLI does
// from inside the pod's namespace (/debug/* answers nowhere else).
func (m *meshPod) admin(t testing.TB, path string) (int, string) {
	t.Helper()
	return adminAt(m.NS, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 7190), path)
}

// adminAt GETs path from an admin port at addr, from inside ns; status 0 and the error when no
// response came.
func adminAt(ns *netns.NS, addr netip.AddrPort, path string) (int, string) {
	resp, err := httpClientIn(ns).Get(fmt.Sprintf("http://%s/%s", addr, strings.TrimPrefix(path, "/")))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (m *meshPod) waitReady(t testing.TB) { m.waitAdmin(t, "/ready", 10*time.Second) }

// waitAdmin waits up to timeout for path on the admin port to answer 200.
func (m *meshPod) waitAdmin(t testing.TB, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		code, body := m.admin(t, path)
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy in %s: %s %d %s after %s\n%s", m.Name, path, code, body, timeout, m.log)
		}
		select {
		case err := <-m.exited:
			m.exited <- err
			t.Fatalf("proxy in %s exited: %v\n%s", m.Name, err, m.log)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitDraining waits until /ready says the proxy is draining.
func (m *meshPod) waitDraining(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := m.admin(t, "/ready")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "draining") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ready while draining: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cmdOut runs a command in the calling thread's namespace (call it inside Do).
func cmdOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return string(out), nil
}

// waitLog waits for text in the proxy's log, which reaches the test through a pipe a little
// after the proxy wrote it.
func (m *meshPod) waitLog(t testing.TB, text string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !strings.Contains(m.log.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy in %s never logged %q:\n%s", m.Name, text, m.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
