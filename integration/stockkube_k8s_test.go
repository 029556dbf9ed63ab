package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourmesh/detour/internal/kubecluster"
	"github.com/detourmesh/detour/internal/kubecluster/kubetest"
)

// TestStockKubeUnmeshed applies the seed's manifests (deploy/examples/stockkube, no Detour)
// to the one-node cluster as a user would, with kubectl, and loads the StockWeb page through
// its Service: with two StockData replicas ready, all 100 calls go to one of them, because
// Kubernetes balances connections and StockWeb holds one. This is the baseline the mesh must
// beat.
func TestStockKubeUnmeshed(t *testing.T) {
	c := kubetest.StartNode(t, kubecluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	files, err := filepath.Glob("../deploy/examples/stockkube/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/examples/stockkube (%v)", err)
	}
	args := []string{"apply"}
	for _, f := range files { // name order: the namespace, then stockdata, then stockweb
		args = append(args, "-f", f)
	}
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := c.Kubectl(ctx, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Log(kubectl(args...))
	kubectl("-n", "stocks", "rollout", "status", "deployment/stockdata", "--timeout=90s")
	kubectl("-n", "stocks", "rollout", "status", "deployment/stockweb", "--timeout=90s")

	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	pods, err := cs.CoreV1().Pods("stocks").List(ctx, metav1.ListOptions{LabelSelector: "app=stockdata"})
	if err != nil {
		t.Fatal(err)
	}
	replicas := map[string]bool{}
	for _, p := range pods.Items {
		replicas[p.Name] = true
	}
	svc, err := cs.CoreV1().Services("stocks").Get(ctx, "stockweb", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: c.NodeNS.DialContext}}
	defer hc.CloseIdleConnections()
	url := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80") + "/api/quotes"
	var page struct {
		Counts     map[string]int `json:"counts"`
		Calls      int            `json:"calls"`
		Errors     int            `json:"errors"`
		FirstError string         `json:"firstError"`
	}
	// kube-proxy programs a new Service within a moment: retry the first load briefly.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = func() error {
			resp, err := hc.Get(url)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, &page); err != nil {
				return fmt.Errorf("%s: %w", b, err)
			}
			if page.Errors > 0 {
				return fmt.Errorf("%d of %d calls failed: %s", page.Errors, page.Calls, page.FirstError)
			}
			return nil
		}()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("loading the StockWeb page through its Service: %v\n%s", err, describe(ctx, c))
	}
	t.Logf("StockWeb page load: %v (StockData replicas %v)", page.Counts, replicas)
	if len(replicas) != 2 {
		t.Fatalf("%d StockData pods, want the manifests' 2", len(replicas))
	}
	if page.Calls != 100 || len(page.Counts) != 1 {
		t.Fatalf("calls %d answered by %v: want all 100 by one replica (connection balancing)", page.Calls, page.Counts)
	}
	for server, n := range page.Counts {
		if !replicas[server] || n != 100 {
			t.Errorf("%d calls answered by %q, not one of the replicas %v", n, server, replicas)
		}
	}
}

// describe shows the cluster's pods and events, for a failure's message.
func describe(ctx context.Context, c *kubecluster.Cluster) string {
	out, _ := exec.CommandContext(ctx, filepath.Join(c.BinDir, "kubectl"), "--kubeconfig", c.Kubeconfig, "get", "pods,svc,endpointslices,events", "-A", "-o", "wide").CombinedOutput()
	return string(out)
}
