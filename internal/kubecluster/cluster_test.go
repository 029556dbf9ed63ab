package kubecluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/detourmesh/detour/internal/kubecluster"
	"github.com/detourmesh/detour/internal/kubecluster/kubetest"
)

// TestControlPlane starts the API-side cluster, makes a Service and a Deployment whose pod
// a stand-in kubelet marks ready, and sees the controller-manager put the pod in the
// Service's EndpointSlice, reviews a ServiceAccount token and has a mutating webhook on
// loopback called; then Stop leaves no process and no directory.
func TestControlPlane(t *testing.T) {
	t.Parallel()
	c := kubetest.Start(t, kubecluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	pids := pidsOf(t, c)

	labels := map[string]string{"app": "stockdata"}
	if _, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "stockdata"},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "grpc", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "stockdata"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "stockdata", Image: "detour.local/stockdata:dev",
					Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
				}}},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The deployment and replicaset controllers make the pod.
	pod := waitFor(ctx, t, "the Deployment's pod", func() (*corev1.Pod, bool) {
		l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=stockdata"})
		if err != nil || len(l.Items) == 0 {
			return nil, false
		}
		return &l.Items[0], true
	})
	if _, err := kubetest.MarkReady(ctx, cs, pod, "198.18.1.7"); err != nil {
		t.Fatal(err)
	}
	slice := waitFor(ctx, t, "an EndpointSlice listing the pod", func() (*discoveryv1.EndpointSlice, bool) {
		return readySlice(ctx, cs, "stockdata", "198.18.1.7")
	})
	if got := *slice.Ports[0].Port; got != 8080 {
		t.Errorf("EndpointSlice port = %d, want the target port 8080", got)
	}

	checkTokenReview(ctx, t, cs)
	checkWebhook(ctx, t, cs)

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, c.Dir, pids)
}

// TestSweep leaves a cluster behind as a crashed run would (its owner gone) and checks that
// Sweep ends its processes and removes its directory, while a running owner's cluster is
// kept.
func TestSweep(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	c := kubetest.Start(t, kubecluster.Options{Root: root})
	pids := pidsOf(t, c)

	// A running owner (this test binary): nothing to sweep.
	if removed, err := kubecluster.Sweep(root); err != nil || len(removed) != 0 {
		t.Fatalf("Sweep with the owner running = %v, %v; want nothing removed", removed, err)
	}
	for _, id := range pids {
		if !alive(id) {
			t.Fatalf("Sweep ended pid %s of a cluster whose owner runs", id)
		}
	}

	// The owner "crashes": its owner file now names a process that has exited.
	if err := os.WriteFile(filepath.Join(c.Dir, "owner"), []byte("1 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := kubecluster.Sweep(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != c.Name {
		t.Errorf("Sweep removed %v, want [%s]", removed, c.Name)
	}
	checkGone(t, c.Dir, pids)
}

// pidsOf reads the cluster's PID files ("PID STARTTIME").
func pidsOf(t *testing.T, c *kubecluster.Cluster) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(c.Dir, "pids", "*"))
	if err != nil || len(files) < 3 {
		t.Fatalf("PID files %v (%v), want etcd, kube-apiserver, kube-controller-manager and more", files, err)
	}
	var ids []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, string(b))
	}
	return ids
}

// alive reports whether "PID STARTTIME" still names a running process.
func alive(id string) bool {
	var pid int
	var start uint64
	fmt.Sscanf(id, "%d %d", &pid, &start)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	var st uint64
	// Field 22, counted after the command name's closing parenthesis.
	i := len(b) - 1
	for i >= 0 && b[i] != ')' {
		i--
	}
	var state string
	var skip [18]string
	n, _ := fmt.Sscan(string(b[i+1:]), &state, &skip[0], &skip[1], &skip[2], &skip[3], &skip[4], &skip[5], &skip[6],
		&skip[7], &skip[8], &skip[9], &skip[10], &skip[11], &skip[12], &skip[13], &skip[14], &skip[15], &skip[16], &skip[17], &st)
	return n == 20 && st == start && state != "Z"
}

func checkGone(t *testing.T, dir string, pids []string) {
	t.Helper()
	for _, id := range pids {
		if alive(id) {
			t.Errorf("process %s still runs after the cluster was removed", id)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state directory %s still exists (%v)", dir, err)
	}
}

func readySlice(ctx context.Context, cs kubernetes.Interface, svc, ip string) (*discoveryv1.EndpointSlice, bool) {
	l, err := cs.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, false
	}
	for i, s := range l.Items {
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) > 0 && ep.Addresses[0] == ip && ep.Conditions.Ready != nil && *ep.Conditions.Ready && len(s.Ports) > 0 {
				return &l.Items[i], true
			}
		}
	}
	return nil, false
}

// waitFor polls get until it reports true or ctx ends.
func waitFor[T any](ctx context.Context, t *testing.T, what string, get func() (T, bool)) T {
	t.Helper()
	for {
		if v, ok := get(); ok {
			return v
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
