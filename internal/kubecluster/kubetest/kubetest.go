// Package kubetest starts kubecluster clusters for tests: one call gives a ready cluster that
// is stopped, with every process and directory removed, when the test ends, and whose
// component logs are shown when it fails. Import it only from _test.go files.
package kubetest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourmesh/detour/internal/kubecluster"
	"github.com/detourmesh/detour/netns/nstest"
)

// Start starts a cluster for t: API-only (etcd, kube-apiserver, kube-controller-manager)
// unless opts.Node is set (see StartNode).
// Without the Kubernetes binaries (scripts/k8s-build.sh) the test is skipped, or fails when
// DETOUR_REQUIRE_ROOT=1 (CI must never skip).
func Start(t testing.TB, opts kubecluster.Options) *kubecluster.Cluster {
	t.Helper()
	if opts.BinDir == "" {
		dir, err := kubecluster.BinDir()
		if err != nil {
			if os.Getenv("DETOUR_REQUIRE_ROOT") == "1" {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		opts.BinDir = dir
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(tWriter{t}, nil))
	}
	// Clusters whose test binary died (a timeout, a panic) would otherwise hold memory
	// and addresses until the next reboot.
	if removed, err := kubecluster.Sweep(opts.Root); err != nil {
		t.Logf("sweeping old clusters: %v", err)
	} else if len(removed) > 0 {
		t.Logf("removed clusters of crashed runs: %v", removed)
	}
	c, err := kubecluster.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster %s up in %s (API server ready in %s), kubeconfig %s", c.Name, c.Timings.Total, c.Timings.ControlPlane, c.Kubeconfig)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("component logs of cluster %s:\n%s", c.Name, c.LogTails(40))
		}
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// StartNode starts a one-node cluster (kubecluster.Options.Node) with its DNS for t, with
// the images of `make image` (bin/images/*.tar of this repository) unless opts.Images names
// others. It needs root: the test fails, or is skipped outside CI, without it.
func StartNode(t testing.TB, opts kubecluster.Options) *kubecluster.Cluster {
	t.Helper()
	nstest.RequireRoot(t)
	opts.Node, opts.DNS = true, true
	if len(opts.Images) == 0 {
		imgs, err := kubecluster.RepoImages()
		if err != nil {
			if os.Getenv("DETOUR_REQUIRE_ROOT") == "1" {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		opts.Images = imgs
	}
	return Start(t, opts)
}

// tWriter sends the harness's progress to the test log.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b))
	return len(b), nil
}

// StandInNode is the Node that MarkReady binds pods to. An API-only cluster runs no node
// lifecycle controller, so it stays as declared (Ready) however long a test runs.
const StandInNode = "kubetest-node"

// MarkReady stands in for a scheduler and a kubelet in an API-only cluster: it binds pod to
// StandInNode (created Ready if missing) and sets its status to Running and Ready with the
// given IPs (the first is the pod's primary IP), so that the controller-manager's
// EndpointSlice controller lists it as a ready endpoint.
func MarkReady(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, ips ...string) (*corev1.Pod, error) {
	fail := func(err error) (*corev1.Pod, error) {
		return nil, fmt.Errorf("marking pod %s/%s ready: %w", pod.Namespace, pod.Name, err)
	}
	if len(ips) == 0 {
		return fail(errors.New("no IP"))
	}
	now := metav1.Now()
	_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: StandInNode},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now,
			Reason: "StandIn", Message: "kubetest.MarkReady stands in for a kubelet",
		}}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fail(err)
	}
	if pod.Spec.NodeName == "" {
		err := cs.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: StandInNode},
		}, metav1.CreateOptions{})
		if err != nil {
			return fail(err)
		}
	}
	p, err := cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return fail(err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ips[0]
	p.Status.PodIPs = nil
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	p.Status.StartTime = &now
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	if p, err = cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fail(err)
	}
	return p, nil
}
