// Package kube holds Detour's tests against a real Kubernetes API server: etcd, kube-apiserver
// and kube-controller-manager started on loopback by internal/kubecluster, one cluster shared by
// every test of the package (each test works in namespaces of its own), and the real detour and
// detour-controller binaries. No scheduler or kubelet runs: kubetest.MarkReady stands in for them
// where a pod must be Running, and admission (the webhook) needs neither.
package kube

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/detourmesh/detour/internal/kubecluster"
	"github.com/detourmesh/detour/internal/syncbuf"
)

var (
	cluster                  *kubecluster.Cluster
	client                   kubernetes.Interface
	detourBin, controllerBin string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	// The informers of the tests' own sources log through klog: not into the test output.
	klog.SetSlogLogger(slog.New(slog.DiscardHandler))
	bin, err := kubecluster.BinDir()
	if err != nil {
		if os.Getenv("DETOUR_REQUIRE_ROOT") == "1" {
			fmt.Fprintln(os.Stderr, "the Kubernetes binaries are missing (make k8s):", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the Kubernetes tests:", err)
		return 0
	}
	if d := os.Getenv("DETOUR_BIN"); d != "" {
		detourBin, controllerBin = d, filepath.Join(filepath.Dir(d), "detour-controller")
	} else {
		dir, err := os.MkdirTemp("", "detour-kube-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		build := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", dir+"/", "../../cmd/detour", "../../cmd/detour-controller")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building detour:", err)
			return 1
		}
		detourBin, controllerBin = filepath.Join(dir, "detour"), filepath.Join(dir, "detour-controller")
	}
	if _, err := kubecluster.Sweep(""); err != nil {
		fmt.Fprintln(os.Stderr, "sweeping clusters of crashed runs:", err)
	}
	var logs syncbuf.Buffer
	cluster, err = kubecluster.Start(context.Background(), kubecluster.Options{BinDir: bin, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the cluster:", err, "\n", logs.String())
		return 1
	}
	defer cluster.Stop()
	fmt.Fprintf(os.Stderr, "cluster %s up in %s\n", cluster.Name, cluster.Timings.Total)
	if client, err = cluster.Client(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "component logs:\n%s\n", cluster.LogTails(30))
	}
	return code
}

// namespace makes a namespace for t (annotations optional), deleted when t ends.
func namespace(t *testing.T, name string, annotations map[string]string) string {
	t.Helper()
	_, err := client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return name
}

// kubectl runs the cluster's kubectl with stdin and returns its stdout, failing t on error.
func kubectl(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, err := kubectlErr(stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func kubectlErr(stdin []byte, args ...string) (string, error) {
	cmd := cluster.Kubectl(context.Background(), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// detour runs the detour binary (stdin optional) and returns stdout, stderr and the error.
func detour(stdin []byte, args ...string) (string, string, error) {
	cmd := exec.Command(detourBin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// freePort returns a TCP port on 127.0.0.1 free at the moment of the call.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// controller is a detour-controller process of a test.
type controller struct {
	cmd  *exec.Cmd
	log  *syncbuf.Buffer
	addr string // gRPC
	done chan struct{}
}

// startController runs detour-controller --source kubernetes on the cluster with the CA in
// caDir and extra flags, until t ends (or stop), and waits until it serves gRPC.
func startController(t *testing.T, caDir string, extra ...string) *controller {
	t.Helper()
	c := &controller{log: &syncbuf.Buffer{}, addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), done: make(chan struct{})}
	// No dashboard: its default address, 127.0.0.1:7080, is the one the integration
	// package's demo forwards its dashboard to, and the two packages run at once.
	args := append([]string{"--source", "kubernetes", "--kubeconfig", cluster.Kubeconfig, "--ca-dir", caDir, "--listen", c.addr, "--dashboard-listen="}, extra...)
	// A later --kubeconfig in extra wins (pflag keeps the last).
	c.cmd = exec.Command(controllerBin, args...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("controller log:\n%s", c.log.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", c.addr, time.Second)
		if err == nil {
			conn.Close()
			return c
		}
		select {
		case <-c.done:
			t.Fatalf("the controller exited: %s", c.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the controller does not listen on %s: %s", c.addr, c.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the controller (SIGTERM, then SIGKILL) and waits for it.
func (c *controller) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// waitLog waits until the controller's log has a line containing s.
func (c *controller) waitLog(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(c.log.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("the controller never logged %q:\n%s", s, c.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newCA makes a CA with detour-controller ca init and returns its directory.
func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if out, err := exec.Command(controllerBin, "ca", "init", "--dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	return dir
}

// eventually polls cond every 50 ms until it returns "" or the bound passes, then fails with
// the last reason.
func eventually(t *testing.T, bound time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", bound, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
