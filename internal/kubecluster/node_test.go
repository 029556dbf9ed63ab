package kubecluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/detourmesh/detour/internal/kubecluster"
	"github.com/detourmesh/detour/internal/kubecluster/kubetest"
	"github.com/detourmesh/detour/netns"
)

// TestNode starts the one-node cluster, runs a pod with an init container and a native
// sidecar (an init container with restartPolicy Always) until it is Ready, reaches it
// through its dual-stack Service from other pods, by name (the cluster DNS) and by IPv6
// ClusterIP, and checks that Stop leaves nothing:
// no process, mount, cgroup, network namespace, or Kubernetes or CNI chain in the root
// namespace.
func TestNode(t *testing.T) {
	c := kubetest.StartNode(t, kubecluster.Options{})
	t.Logf("node Ready %s after start (images imported in %s), DNS Ready %s", c.Timings.NodeReady, c.Timings.Images, c.Timings.DNSReady)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	pids := pidsOf(t, c)
	nsName := c.NodeNS.Name

	always := corev1.ContainerRestartPolicyAlways
	tcpProbe := func(port int32) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}}, PeriodSeconds: 1}
	}
	labels := map[string]string{"app": "quotes"}
	begin := time.Now()
	pod, err := cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "quotes", Labels: labels},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				// Detour's image as an init container: it prints its rules and exits.
				{Name: "init", Image: "detour.local/detour:dev", Args: []string{"init", "--dry-run"}},
				// A native sidecar: started before the app, Ready by its startup probe,
				// and running beside it.
				{Name: "sidecar", Image: "detour.local/stockdata:dev", Args: []string{"--listen", ":9090", "--id", "sidecar"},
					RestartPolicy: &always, StartupProbe: tcpProbe(9090)},
			},
			Containers: []corev1.Container{{
				Name: "app", Image: "detour.local/stockdata:dev", Args: []string{"--listen", ":8080", "--id", "quotes"},
				ReadinessProbe: tcpProbe(8080),
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod = waitPodReady(ctx, t, cs, "default", pod.Name)
	t.Logf("pod with an init container and a native sidecar Ready in %s", time.Since(begin).Round(time.Millisecond))
	if st := pod.Status.InitContainerStatuses; len(st) != 2 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 0 || st[1].State.Running == nil {
		t.Errorf("init container statuses %+v: want init exited 0 and the sidecar running", st)
	}
	logs, err := cs.CoreV1().Pods("default").GetLogs(pod.Name, &corev1.PodLogOptions{Container: "init"}).DoRaw(ctx)
	if err != nil || !strings.Contains(string(logs), "DETOUR_OUTBOUND") {
		t.Errorf("the init container's log (through the API server and the kubelet) = %q, %v; want detour's dry-run rules", logs, err)
	}

	if len(pod.Status.PodIPs) != 2 || !strings.HasPrefix(pod.Status.PodIPs[1].IP, "fd00:de70:1::") {
		t.Errorf("pod IPs %v, want one IPv4 and one in fd00:de70:1::/64", pod.Status.PodIPs)
	}
	dual := corev1.IPFamilyPolicyRequireDualStack
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "quotes"},
		Spec: corev1.ServiceSpec{Selector: labels, IPFamilyPolicy: &dual,
			Ports: []corev1.ServicePort{{Name: "grpc", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("dual-stack Service got ClusterIPs %v", svc.Spec.ClusterIPs)
	}
	// One client by the Service's name (the cluster DNS gives its IPv4 address), one by its
	// IPv6 ClusterIP.
	for _, w := range []struct{ name, addr string }{
		{"web", "quotes:80"},
		{"web6", net.JoinHostPort(svc.Spec.ClusterIPs[1], "80")},
	} {
		web, err := cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: w.name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "web", Image: "detour.local/stockweb:dev", Args: []string{"--listen", ":8000", "--calls", "10"},
				Env:            []corev1.EnvVar{{Name: "STOCKDATA_ADDR", Value: w.addr}},
				ReadinessProbe: tcpProbe(8000),
			}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		web = waitPodReady(ctx, t, cs, "default", web.Name)
		// kube-proxy programs the Service a moment after it exists: load until the calls
		// pass.
		counts := waitFor(ctx, t, "StockWeb's calls to "+w.addr, func() (map[string]int, bool) {
			q, err := pageLoad(ctx, c.NodeNS, web.Status.PodIP)
			return q.Counts, err == nil && q.Errors == 0
		})
		if counts["quotes"] != 10 {
			t.Errorf("calls to %s answered by %v, want all 10 by the quotes pod", w.addr, counts)
		}
	}

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, c.Dir, pids)
	checkNodeGone(t, c, nsName)
}

func waitPodReady(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	return waitFor(ctx, t, "pod "+name+" Ready", func() (*corev1.Pod, bool) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, false
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return p, true
			}
		}
		return nil, false
	})
}

// quotes is what StockWeb's /api/quotes answers.
type quotes struct {
	Counts map[string]int `json:"counts"`
	Errors int            `json:"errors"`
}

// pageLoad asks StockWeb at podIP (reached from the node's namespace) for one page load.
func pageLoad(ctx context.Context, node *netns.NS, podIP string) (quotes, error) {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return node.DialContext(ctx, network, addr)
		},
	}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(podIP, "8000")+"/api/quotes", nil)
	if err != nil {
		return quotes{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return quotes{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return quotes{}, err
	}
	var q quotes
	if err := json.Unmarshal(b, &q); err != nil {
		return quotes{}, fmt.Errorf("%s: %w", b, err)
	}
	return q, nil
}

// checkNodeGone checks what a node cluster could leave on the host after Stop.
func checkNodeGone(t *testing.T, c *kubecluster.Cluster, nsName string) {
	t.Helper()
	if _, err := os.Stat("/run/netns/" + nsName); !os.IsNotExist(err) {
		t.Errorf("node namespace %s still exists (%v)", nsName, err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), c.Dir) {
		t.Errorf("mounts under %s remain", c.Dir)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*/detour-kube-" + c.Name); len(left) > 0 {
		t.Errorf("cgroups remain: %v", left)
	}
	for _, save := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		out, err := exec.Command(save).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", save, err, out)
			continue
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, ":KUBE-") || strings.HasPrefix(l, ":CNI-") {
				t.Errorf("%s in the root namespace shows chain %s", save, l)
			}
		}
	}
	for _, p := range []string{"/var/lib/cni/results", "/var/log/containers", "/run/containerd/s"} {
		entries, _ := os.ReadDir(p)
		for _, e := range entries {
			if strings.Contains(e.Name(), c.Name) {
				t.Errorf("%s/%s remains", p, e.Name())
			}
		}
	}
}

// TestNodeSweep leaves a node cluster with a running pod behind as a crashed run would (its
// owner gone) and checks that Sweep removes all of it: containers, mounts, cgroups, the node
// namespace.
func TestNodeSweep(t *testing.T) {
	c := kubetest.StartNode(t, kubecluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "left"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "detour.local/stockdata:dev", Args: []string{"--listen", ":8080"},
		}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodReady(ctx, t, cs, "default", "left")
	pids := pidsOf(t, c)
	nsName := c.NodeNS.Name

	if err := os.WriteFile(filepath.Join(c.Dir, "owner"), []byte("1 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := kubecluster.Sweep("")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(removed, c.Name) {
		t.Errorf("Sweep removed %v, want %s among them", removed, c.Name)
	}
	checkGone(t, c.Dir, pids)
	checkNodeGone(t, c, nsName)
}
