package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourmesh/detour/debug/pods"
	"github.com/detourmesh/detour/debug/proxyapi"
	"github.com/detourmesh/detour/examples/stockkube/stockdata"
	"github.com/detourmesh/detour/init/plan"
	"github.com/detourmesh/detour/inject"
	"github.com/detourmesh/detour/internal/kubecluster"
	"github.com/detourmesh/detour/internal/kubecluster/kubetest"
	"github.com/detourmesh/detour/internal/syncbuf"
	"github.com/detourmesh/detour/netns"
)

// TestStockKube walks the seed's story on the one-node cluster as a user would, with kubectl
// and the detour binary, in one cluster (its steps build on each other, so a failed step
// ends the walk):
//
//   - `detour install | kubectl apply -f -` runs the controller from its image, and `detour
//     check` passes;
//   - the StockKube manifests without Detour: all 100 calls of a page load go to one StockData
//     pod (Kubernetes balances connections, StockWeb holds one), and the calls are plaintext
//     on the node's bridge (the control run of the capture below);
//   - `detour inject ... | kubectl apply -f -`: the pods come up with detour-init (its proof
//     passed, read from its log) and the native sidecar, Ready; page loads spread their 100
//     calls over both replicas (within 15 % of even with the round-robin balancer), and
//     neither a call nor an answer crosses the bridge in the clear (mutual TLS); each
//     proxy's identity is its ServiceAccount's, which only a TokenReview can have given it;
//     `detour debug pods` on the node lists the pods;
//   - `kubectl scale deployment stockdata --replicas=3`: a page load reaches all three;
//   - kubelet probes of an app in strict policy keep passing while a plaintext request to it
//     is refused; a meshed Job completes and its pod terminates;
//   - deleting a StockData pod under load loses no call (never-reached requests are rerouted).
func TestStockKube(t *testing.T) {
	c := kubetest.StartNode(t, kubecluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	k := &kube{t: t, c: c, cs: cs, ctx: ctx}
	files, err := filepath.Glob("../deploy/examples/stockkube/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/examples/stockkube (%v)", err)
	}
	web := k.serviceURL("stocks", "stockweb")

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	step("install", func(t *testing.T) {
		start := time.Now()
		manifests := k.detour(t, nil, "install")
		k.kubectl(t, manifests, "apply", "-f", "-")
		k.kubectl(t, nil, "-n", "detour", "rollout", "status", "deployment/detour-controller", "--timeout=60s")
		t.Logf("controller Ready %s after detour install", time.Since(start).Round(time.Millisecond))
		// The controller puts its CA bundle into the webhook configuration once it runs.
		var out string
		eventuallyK(t, 30*time.Second, func() string {
			var err error
			if out, err = k.detourErr(nil, "check", "--kubeconfig", c.Kubeconfig); err != nil {
				return fmt.Sprintf("detour check: %v\n%s", err, out)
			}
			return ""
		})
		t.Logf("detour check:\n%s", out)
	})

	var unmeshedData []string
	step("unmeshed", func(t *testing.T) {
		args := []string{"apply"}
		for _, f := range files { // name order: the namespace, then stockdata, then stockweb
			args = append(args, "-f", f)
		}
		start := time.Now()
		t.Log(k.kubectl(t, nil, args...))
		data, webPods := k.rolledOut(t, "stockdata", 2, false), k.rolledOut(t, "stockweb", 1, false)
		t.Logf("pods Ready %s after kubectl apply", time.Since(start).Round(time.Millisecond))
		unmeshedData = names(data)
		wire := k.capture(t, webPods, data)
		page := k.pageLoad(t, web)
		calls, answers := wire.stop()
		t.Logf("StockWeb page load: %v (StockData replicas %v)", page.Counts, unmeshedData)
		if page.Calls != 100 || len(page.Counts) != 1 {
			t.Fatalf("calls %d answered by %v: want all 100 by one replica (connection balancing)", page.Calls, page.Counts)
		}
		for server, n := range page.Counts {
			if !slices.Contains(unmeshedData, server) || n != 100 {
				t.Errorf("%d calls answered by %q, not one of the replicas %v", n, server, unmeshedData)
			}
			// The control run of the mutual TLS check: every answer carries the replica's
			// name, and without the mesh it crosses the bridge as it is.
			if !bytes.Contains(answers, []byte(server)) {
				t.Errorf("the capture of StockData's answers (%d bytes) does not show the answering replica's name %q in plaintext: the capture sees nothing", len(answers), server)
			}
		}
		// And every call carries its symbol.
		for _, sym := range stockdata.Symbols {
			if !bytes.Contains(calls, []byte(sym)) {
				t.Errorf("the capture of StockWeb's calls (%d bytes) does not show the symbol %q in plaintext: the capture sees nothing", len(calls), sym)
			}
		}
	})

	var data, webPods []corev1.Pod
	step("injected", func(t *testing.T) {
		yaml := k.detour(t, nil, append([]string{"inject"}, files...)...)
		start := time.Now()
		t.Log(k.kubectl(t, yaml, "apply", "-f", "-"))
		data, webPods = k.rolledOut(t, "stockdata", 2, true), k.rolledOut(t, "stockweb", 1, true)
		t.Logf("meshed pods Ready %s after kubectl apply", time.Since(start).Round(time.Millisecond))
		for _, p := range append(slices.Clone(data), webPods...) {
			k.checkInjected(t, p)
		}
	})

	step("balanced and mutual TLS", func(t *testing.T) {
		// The first load also opens the proxy's mutual TLS connections to the replicas,
		// one after the other; the balance is judged on the loads after it.
		cold := k.pageLoad(t, web)
		wire := k.capture(t, webPods, data)
		// The proxy's default balancer, P2C over peak EWMA latency (10 s decay), is not meant
		// to be even: it sends fewer calls to a replica whose answers were slower lately, and
		// on this busy machine one replica sometimes is, for seconds (40/60 over ten loads
		// seen, with its latency estimate higher). What it must do is spread: every load
		// reaches both replicas, each with a real share of the 1,000 calls.
		var warm []map[string]int
		total := map[string]int{}
		for range 10 {
			page := k.pageLoad(t, web)
			if page.Calls != 100 || len(page.Counts) != 2 {
				t.Errorf("calls %d answered by %v: want the 100 calls over both replicas", page.Calls, page.Counts)
			}
			for s, n := range page.Counts {
				total[s] += n
			}
			warm = append(warm, page.Counts)
		}
		calls, answers := wire.stop()
		t.Logf("StockWeb page loads with p2c-ewma: the first %v, then %v, in all %v; the proxy's estimates: %s",
			cold.Counts, warm, total, k.stockDataView(t, webPods[0]))
		for _, p := range data {
			if n := total[p.Name]; n < 250 {
				t.Errorf("replica %s answered %d of the 1,000 calls: want a quarter at least", p.Name, n)
			}
		}
		for _, p := range data {
			if bytes.Contains(answers, []byte(p.Name)) {
				t.Errorf("the answers of replica %s cross the bridge in plaintext: its name is in the capture", p.Name)
			}
		}
		for _, sym := range stockdata.Symbols {
			if bytes.Contains(calls, []byte(sym)) {
				t.Errorf("StockWeb's calls cross the bridge in plaintext: the symbol %q is in the capture", sym)
			}
		}
		// A capture that saw nothing would prove nothing: 1,000 calls and answers are many KB.
		if len(calls) < 20000 || len(answers) < 20000 {
			t.Errorf("the capture between the StockWeb and StockData pods holds %d bytes of calls and %d of answers: it missed them", len(calls), len(answers))
		}
		t.Logf("captured %d bytes of calls and %d of answers between the StockWeb and StockData pods, no symbol and no replica's name among them", len(calls), len(answers))

		// Even is round robin's promise: the Service annotated so, a page load spreads its
		// 100 calls within 15 % of even. The annotation then goes again.
		k.kubectl(t, nil, "-n", "stocks", "annotate", "service/stockdata", "config.detour.io/balancer=round-robin")
		k.waitBalancer(t, webPods[0], "round-robin")
		page := k.pageLoad(t, web)
		t.Logf("a StockWeb page load with round-robin: %v", page.Counts)
		for _, p := range data {
			if n := page.Counts[p.Name]; n < 43 || n > 57 {
				t.Errorf("with round-robin, replica %s answered %d of 100 calls: want 50 within 15 %% (43 to 57)", p.Name, n)
			}
		}
		k.kubectl(t, nil, "-n", "stocks", "annotate", "service/stockdata", "config.detour.io/balancer-")
		k.waitBalancer(t, webPods[0], "p2c-ewma")
	})

	step("identity by TokenReview", func(t *testing.T) {
		// The controller runs without bootstrap tokens (deploy/deployment.yaml): a proxy can
		// only have its certificate by the TokenReview of its projected ServiceAccount token.
		dep, err := cs.AppsV1().Deployments("detour").Get(ctx, "detour-controller", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if args := strings.Join(dep.Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(args, "--tokens") {
			t.Fatalf("the controller runs with bootstrap tokens (%s): the identity would not prove TokenReview", args)
		}
		for _, p := range append(slices.Clone(data), webPods...) {
			want := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", p.Namespace, p.Spec.ServiceAccountName)
			id := k.identity(t, p)
			if id.ID != want || !id.Ready {
				t.Errorf("pod %s: /debug/identity %+v: want %s, ready", p.Name, id, want)
			}
		}
		// And the API server reviewed tokens: at least one TokenReview created per proxy.
		reviews := 0.0
		for _, line := range strings.Split(k.kubectl(t, nil, "get", "--raw", "/metrics"), "\n") {
			if strings.HasPrefix(line, "apiserver_request_total{") && strings.Contains(line, `resource="tokenreviews"`) &&
				strings.Contains(line, `verb="POST"`) && strings.Contains(line, `code="201"`) {
				v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				reviews += v
			}
		}
		if want := len(data) + len(webPods); reviews < float64(want) {
			t.Errorf("the API server created %v TokenReviews, fewer than the %d meshed pods", reviews, want)
		}
		t.Logf("the API server created %v TokenReviews", reviews)
		log := k.kubectl(t, nil, "-n", "detour", "logs", "deployment/detour-controller")
		if !strings.Contains(log, "certificate issued") || !strings.Contains(log, "spiffe://cluster.local/ns/stocks/sa/stockweb") {
			t.Errorf("the controller's log does not show the StockWeb certificate issued:\n%s", log)
		}
	})

	step("detour debug pods", func(t *testing.T) {
		out := k.detour(t, nil, "debug", "pods", "-o", "json")
		var listed []pods.Pod
		if err := json.Unmarshal(out, &listed); err != nil {
			t.Fatalf("detour debug pods -o json: %v\n%s", err, out)
		}
		// The node's /proc also holds the proxies of other runs on this machine: each of
		// this cluster's meshed pods must be there, by namespace and name.
		for _, p := range append(slices.Clone(data), webPods...) {
			found := slices.ContainsFunc(listed, func(l pods.Pod) bool { return l.Namespace == p.Namespace && l.Name == p.Name })
			if !found {
				t.Errorf("detour debug pods does not list %s/%s:\n%s", p.Namespace, p.Name, out)
			}
		}
		t.Logf("detour debug pods:\n%s", k.detour(t, nil, "debug", "pods"))
	})

	step("scaled to 3", func(t *testing.T) {
		start := time.Now()
		k.kubectl(t, nil, "-n", "stocks", "scale", "deployment/stockdata", "--replicas=3")
		scaled := k.rolledOut(t, "stockdata", 3, true)
		ready := time.Since(start)
		var page quotesPage
		eventuallyK(t, 15*time.Second, func() string {
			page = k.pageLoad(t, web)
			if len(page.Counts) != 3 {
				return fmt.Sprintf("a page load reached %v, not all of %v", page.Counts, names(scaled))
			}
			return ""
		})
		t.Logf("after kubectl scale: the third replica Ready in %s, a page load over all three %s after the scale: %v",
			ready.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), page.Counts)
		data = scaled
	})

	step("probes in strict policy", func(t *testing.T) { k.strictProbes(t) })
	step("job", func(t *testing.T) { k.job(t) })
	var deleted string
	step("StockData pod deleted under load", func(t *testing.T) { deleted = k.deleteUnderLoad(t, web, data) })
	step("dashboard", func(t *testing.T) { k.dashboard(t, deleted) })
}

// dashboard runs detour dashboard as a user does against the cluster (kubectl port-forward to
// the controller's Deployment) and reads, through it, what the meshed proxies reported: every
// StockData pod that served the load above, with its requests, all over mutual TLS; the
// deleted one too (its proxy's last report, sent as it stopped).
func (k *kube) dashboard(t *testing.T, deleted string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(detourBin, "dashboard", "--controller", "http://127.0.0.1:1", "--port", strconv.Itoa(port), "-o", "json")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+k.c.Kubeconfig, "PATH="+k.c.BinDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// SIGTERM ends its context, which ends the kubectl it started.
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	var said struct {
		URL        string `json:"url"`
		Forwarding bool   `json:"forwarding"`
	}
	decoded := make(chan error, 1)
	go func() {
		decoded <- json.NewDecoder(out).Decode(&said)
		io.Copy(io.Discard, out)
	}()
	select {
	case err := <-decoded:
		if err != nil || !said.Forwarding {
			t.Fatalf("detour dashboard -o json said %+v (%v), want a URL it forwards\n%s", said, err, stderr.String())
		}
	case <-time.After(45 * time.Second):
		t.Fatalf("detour dashboard printed no URL within 45 s\n%s", stderr.String())
	}
	t.Logf("detour dashboard: %s", said.URL)
	controller := strings.TrimSuffix(said.URL, "/")
	// The proxies report every 10 s: the load above is there within two reports.
	eventuallyK(t, 30*time.Second, func() string {
		o, err := k.detourErr(nil, "stat", "pod", "--controller", controller, "-t", "2m", "-o", "json")
		if err != nil {
			return fmt.Sprintf("detour stat pod: %v\n%s", err, o)
		}
		var st struct{ Rows []statRow }
		if err := json.Unmarshal([]byte(o), &st); err != nil {
			return fmt.Sprintf("detour stat pod -o json: %v\n%s", err, o)
		}
		served, sawDeleted := 0, false
		for _, r := range st.Rows {
			if strings.HasPrefix(r.Name, "stockdata-") && r.Requests > 0 {
				if r.MTLSShare == nil || *r.MTLSShare != 1 {
					return fmt.Sprintf("pod %s served %d requests, not all over mutual TLS (%v)", r.Name, r.Requests, r.MTLSShare)
				}
				served++
				sawDeleted = sawDeleted || r.Name == deleted
			}
		}
		if served < 4 || !sawDeleted {
			return fmt.Sprintf("%d StockData pods with requests (the deleted %s among them: %v), want the 4 that served the load:\n%s", served, deleted, sawDeleted, o)
		}
		return ""
	})
	text, _ := k.detourErr(nil, "stat", "pod", "--controller", controller, "-t", "2m")
	t.Logf("detour stat pod through the forwarded dashboard:\n%s", text)
}

// kube is the test's cluster and its tools.
type kube struct {
	t   *testing.T
	c   *kubecluster.Cluster
	cs  kubernetes.Interface
	ctx context.Context
}

// kubectl runs the cluster's kubectl with stdin (nil: none), failing t on error.
func (k *kube) kubectl(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	cmd := k.c.Kubectl(k.ctx, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s\n%s", strings.Join(args, " "), err, out, describe(k.ctx, k.c))
	}
	return string(out)
}

// detour runs the detour binary on the node (this machine) and returns its stdout.
func (k *kube) detour(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(k.ctx, detourBin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("detour %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func (k *kube) detourErr(stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(k.ctx, detourBin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// serviceURL is http://CLUSTER-IP:80 of a Service, reachable from the node's namespace. The
// Service does not exist yet when the test starts: its address is looked up on first use.
func (k *kube) serviceURL(ns, name string) fmt.Stringer {
	return &lazyURL{get: func() string {
		svc, err := k.cs.CoreV1().Services(ns).Get(k.ctx, name, metav1.GetOptions{})
		if err != nil {
			k.t.Errorf("Service %s/%s: %v", ns, name, err)
			return "http://service-not-found"
		}
		return "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80")
	}}
}

// lazyURL defers a lookup until String, and keeps what it found.
type lazyURL struct {
	once sync.Once
	get  func() string
	url  string
}

func (u *lazyURL) String() string {
	u.once.Do(func() { u.url = u.get() })
	return u.url
}

// rolledOut waits until deployment app of namespace stocks has want pods, all Ready, none
// terminating, each with Detour's proxy if meshed (without it if not), and returns them.
func (k *kube) rolledOut(t *testing.T, app string, want int, meshed bool) []corev1.Pod {
	t.Helper()
	k.kubectl(t, nil, "-n", "stocks", "rollout", "status", "deployment/"+app, "--timeout=90s")
	var got []corev1.Pod
	eventuallyK(t, 60*time.Second, func() string {
		list, err := k.cs.CoreV1().Pods("stocks").List(k.ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return err.Error()
		}
		got = got[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				return fmt.Sprintf("pod %s is still terminating", p.Name)
			}
			if hasProxy(p) != meshed {
				return fmt.Sprintf("pod %s: meshed %v, want %v", p.Name, hasProxy(p), meshed)
			}
			if !podReady(p) {
				return fmt.Sprintf("pod %s is not Ready", p.Name)
			}
			got = append(got, p)
		}
		if len(got) != want {
			return fmt.Sprintf("%d %s pods, want %d", len(got), app, want)
		}
		return ""
	})
	return got
}

func hasProxy(p corev1.Pod) bool {
	return slices.ContainsFunc(p.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == inject.ProxyContainer })
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func names(ps []corev1.Pod) []string {
	var n []string
	for _, p := range ps {
		n = append(n, p.Name)
	}
	return n
}

// checkInjected checks what the webhook made of pod p: detour-init ran first and its proof
// passed (every step ok but the proxy-UID exemption, which it cannot exercise without
// CAP_SETUID: it runs with NET_ADMIN and NET_RAW only), and detour-proxy runs as a native
// sidecar (an init container with restartPolicy Always), started and ready, before the app.
func (k *kube) checkInjected(t *testing.T, p corev1.Pod) {
	t.Helper()
	ics := p.Spec.InitContainers
	if len(ics) != 2 || ics[0].Name != inject.InitContainer || ics[1].Name != inject.ProxyContainer {
		t.Fatalf("pod %s: init containers %v, want [%s %s]", p.Name, containerNames(ics), inject.InitContainer, inject.ProxyContainer)
	}
	if rp := ics[1].RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyAlways {
		t.Errorf("pod %s: %s is not a native sidecar (restartPolicy %v)", p.Name, inject.ProxyContainer, rp)
	}
	if sc := ics[0].SecurityContext; sc == nil || sc.Capabilities == nil {
		t.Errorf("pod %s: %s has no capabilities set", p.Name, inject.InitContainer)
	} else if caps := sc.Capabilities; !slices.Equal(caps.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("pod %s: %s has capabilities %+v, want NET_ADMIN and NET_RAW only", p.Name, inject.InitContainer, caps)
	}
	for _, st := range p.Status.InitContainerStatuses {
		switch st.Name {
		case inject.InitContainer:
			if st.State.Terminated == nil || st.State.Terminated.ExitCode != 0 {
				t.Errorf("pod %s: %s did not exit 0: %+v", p.Name, st.Name, st.State)
			}
		case inject.ProxyContainer:
			if st.State.Running == nil || !st.Ready || st.Started == nil || !*st.Started {
				t.Errorf("pod %s: %s is not running and ready: %+v", p.Name, st.Name, st)
			}
		}
	}
	log := k.kubectl(t, nil, "-n", p.Namespace, "logs", p.Name, "-c", inject.InitContainer)
	proofs := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		// FAMILY  PROOF  RESULT  DETAIL
		f := strings.Fields(sc.Text())
		if len(f) < 3 || (f[0] != "IPv4" && f[0] != "IPv6") {
			continue
		}
		want := "ok"
		if f[1] == "proxy-uid-exempt" {
			want = "skipped"
		}
		if f[2] != want {
			t.Errorf("pod %s: detour-init's proof %s %s: %s, want %s\n%s", p.Name, f[0], f[1], f[2], want, log)
		}
		proofs[f[0]]++
	}
	if proofs["IPv4"] < 4 || proofs["IPv6"] < 4 {
		t.Errorf("pod %s: detour-init's log has %v proof steps, want the four of each family:\n%s", p.Name, proofs, log)
	}
}

func containerNames(cs []corev1.Container) []string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return n
}

// quotesPage is StockWeb's /api/quotes.
type quotesPage struct {
	Counts     map[string]int `json:"counts"`
	Calls      int            `json:"calls"`
	Errors     int            `json:"errors"`
	FirstError string         `json:"firstError"`
}

// loadPage loads the StockWeb page once from the node's namespace.
func (k *kube) loadPage(url string) (quotesPage, error) {
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: k.c.NodeNS.DialContext}}
	defer hc.CloseIdleConnections()
	var page quotesPage
	resp, err := hc.Get(url + "/api/quotes")
	if err != nil {
		return page, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return page, err
	}
	if err := json.Unmarshal(b, &page); err != nil {
		return page, fmt.Errorf("%s: %w", b, err)
	}
	return page, nil
}

// pageLoad loads the page until one load answers every call (kube-proxy programs a new
// Service, and StockWeb connects, within a moment), within 30 s.
func (k *kube) pageLoad(t *testing.T, url fmt.Stringer) quotesPage {
	t.Helper()
	var page quotesPage
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		page, err = k.loadPage(url.String())
		if err == nil && page.Errors > 0 {
			err = fmt.Errorf("%d of %d calls failed: %s", page.Errors, page.Calls, page.FirstError)
		}
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("loading the StockWeb page through its Service: %v\n%s", err, describe(k.ctx, k.c))
	}
	return page
}

// identity reads /debug/identity of pod p's proxy from inside its network namespace, which
// it finds as `detour debug` does: from /proc.
func (k *kube) identity(t *testing.T, p corev1.Pod) proxyapi.Identity {
	t.Helper()
	id, ok, err := proxyapi.New(k.podNS(t, p), plan.DefaultAdminPort, p.Name).Identity(k.ctx)
	if err != nil || !ok {
		t.Fatalf("pod %s: /debug/identity: ok %v, %v", p.Name, ok, err)
	}
	return id
}

// stockDataEndpoints reads the StockData service of the /debug/endpoints of pod p's proxy.
func (k *kube) stockDataEndpoints(t *testing.T, p corev1.Pod) (proxyapi.Service, bool) {
	t.Helper()
	eps, err := proxyapi.New(k.podNS(t, p), plan.DefaultAdminPort, p.Name).Endpoints(k.ctx, false)
	if err != nil {
		t.Fatalf("pod %s: /debug/endpoints: %v", p.Name, err)
	}
	for _, svc := range eps.Services {
		if strings.HasPrefix(svc.Name, "stockdata.stocks") {
			return svc, true
		}
	}
	return proxyapi.Service{}, false
}

// stockDataView says how pod p's proxy sees StockData: its balancer and each endpoint's
// latency estimate.
func (k *kube) stockDataView(t *testing.T, p corev1.Pod) string {
	t.Helper()
	svc, ok := k.stockDataEndpoints(t, p)
	if !ok {
		return "no StockData service"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s:", svc.Balancer)
	for _, e := range svc.Endpoints {
		fmt.Fprintf(&b, " %s %.2f ms (in flight %d)", e.Address, e.RTTms, e.InFlight)
	}
	return b.String()
}

// waitBalancer waits until pod p's proxy balances StockData with balancer.
func (k *kube) waitBalancer(t *testing.T, p corev1.Pod, balancer string) {
	t.Helper()
	eventuallyK(t, 15*time.Second, func() string {
		if svc, ok := k.stockDataEndpoints(t, p); !ok || svc.Balancer != balancer {
			return fmt.Sprintf("the proxy of %s balances StockData with %q, want %s", p.Name, svc.Balancer, balancer)
		}
		return ""
	})
}

// podNS is the network namespace of pod p's proxy, as /proc/PID/ns/net of the proxy.
func (k *kube) podNS(t *testing.T, p corev1.Pod) *netns.NS {
	t.Helper()
	all, err := pods.Finder{}.Find()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range all {
		if f.Namespace == p.Namespace && f.Name == p.Name {
			ns, err := netns.OpenPath(fmt.Sprintf("/proc/%d/ns/net", f.PID))
			if err != nil {
				t.Fatal(err)
			}
			return ns
		}
	}
	t.Fatalf("no detour proxy on the node serves pod %s/%s: %s", p.Namespace, p.Name, pods.Summary(all))
	return nil
}

// proxyMetric reads the /metrics of the proxy in ns and sums the samples of metric whose
// labels include every one of match (`name="value"`).
func (k *kube) proxyMetric(t *testing.T, ns *netns.NS, metric string, match ...string) float64 {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: ns.DialContext}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", plan.DefaultAdminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		for _, m := range match {
			if !strings.Contains(line, m) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// strictProbes runs a meshed StockWeb in strict policy with kubelet liveness and readiness
// probes every second: they pass (plaintext from the node, let through by path) for several
// rounds without a restart, while a plaintext request to the same port is refused.
func (k *kube) strictProbes(t *testing.T) {
	manifest := []byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: probed, namespace: stocks, labels: {app: probed}}
spec:
  replicas: 1
  selector: {matchLabels: {app: probed}}
  template:
    metadata:
      labels: {app: probed}
      annotations: {config.detour.io/default-inbound-policy: strict}
    spec:
      serviceAccountName: stockweb
      containers:
        - name: web
          image: detour.local/stockweb:dev
          args: ["--listen", ":8000"]
          env: [{name: STOCKDATA_ADDR, value: "stockdata:80"}]
          ports: [{name: http, containerPort: 8000}]
          livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 2}
          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 1}
`)
	k.kubectl(t, k.detour(t, manifest, "inject", "-"), "apply", "-f", "-")
	probed := k.rolledOut(t, "probed", 1, true)[0]
	ns := k.podNS(t, probed)
	app := net.JoinHostPort(probed.Status.PodIP, "8000")
	probes := func() float64 {
		return k.proxyMetric(t, ns, "detour_responses_total", `direction="inbound"`, `authority="`+app+`"`, `peer_identity=""`, `status_code="200"`)
	}
	// Both probes run every second: six plaintext answers are three rounds at least.
	eventuallyK(t, 30*time.Second, func() string {
		if n := probes(); n < 6 {
			return fmt.Sprintf("the proxy answered %v kubelet probes with 200 so far", n)
		}
		return ""
	})
	// The same port refuses a plaintext request that is not a probe.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: k.c.NodeNS.DialContext}}
	defer hc.CloseIdleConnections()
	before := k.proxyMetric(t, ns, "detour_authz_denials_total", `direction="inbound"`, `port="8000"`)
	resp, err := hc.Get("http://" + app + "/api/quotes")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("a plaintext GET /api/quotes to the strict pod was answered 200")
		}
	}
	if after := k.proxyMetric(t, ns, "detour_authz_denials_total", `direction="inbound"`, `port="8000"`); after <= before {
		t.Errorf("the plaintext request was not counted as denied (detour_authz_denials_total %v, then %v; err %v)", before, after, err)
	}
	n := probes()
	p, err := k.cs.CoreV1().Pods("stocks").Get(k.ctx, probed.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !podReady(*p) {
		t.Errorf("pod %s is no longer Ready", p.Name)
	}
	for _, st := range p.Status.ContainerStatuses {
		if st.RestartCount != 0 {
			t.Errorf("pod %s: container %s restarted %d times: its liveness probe failed", p.Name, st.Name, st.RestartCount)
		}
	}
	t.Logf("strict pod %s: %v kubelet probes answered 200 through the proxy, no restart; a plaintext request refused", p.Name, n)
	k.kubectl(t, nil, "-n", "stocks", "delete", "deployment/probed", "--wait=false")
}

// job runs a meshed Job (its container waits for the proxy beside it, then exits 0): it
// completes, and its pod terminates, the native sidecar with it.
func (k *kube) job(t *testing.T) {
	manifest := []byte(`apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: stocks}
spec:
  backoffLimit: 0
  template:
    metadata: {labels: {app: once}}
    spec:
      restartPolicy: Never
      serviceAccountName: stockweb
      containers:
        - name: once
          image: detour.local/detour:dev
          args: ["wait-ready", "--timeout", "60s"]
          securityContext: {runAsUser: 65532, runAsGroup: 65532}
`)
	start := time.Now()
	k.kubectl(t, k.detour(t, manifest, "inject", "-"), "apply", "-f", "-")
	k.kubectl(t, nil, "-n", "stocks", "wait", "--for=condition=complete", "job/once", "--timeout=60s")
	var pod corev1.Pod
	eventuallyK(t, 30*time.Second, func() string {
		list, err := k.cs.CoreV1().Pods("stocks").List(k.ctx, metav1.ListOptions{LabelSelector: "app=once"})
		if err != nil {
			return err.Error()
		}
		if len(list.Items) != 1 {
			return fmt.Sprintf("%d pods of the Job", len(list.Items))
		}
		pod = list.Items[0]
		if pod.Status.Phase != corev1.PodSucceeded {
			return fmt.Sprintf("pod %s is %s", pod.Name, pod.Status.Phase)
		}
		for _, st := range append(slices.Clone(pod.Status.InitContainerStatuses), pod.Status.ContainerStatuses...) {
			if st.State.Terminated == nil {
				return fmt.Sprintf("pod %s: container %s has not terminated: %+v", pod.Name, st.Name, st.State)
			}
		}
		return ""
	})
	if !hasProxy(pod) {
		t.Errorf("the Job's pod %s has no %s", pod.Name, inject.ProxyContainer)
	}
	t.Logf("meshed Job complete and its pod %s Succeeded, every container terminated, %s after kubectl apply", pod.Name, time.Since(start).Round(time.Millisecond))
}

// deleteUnderLoad loads the page again and again while one StockData pod is deleted, until
// its replacement is Ready and two more loads ran (at most 2000 loads or 40 s), and reports
// how many calls failed.
func (k *kube) deleteUnderLoad(t *testing.T, web fmt.Stringer, data []corev1.Pod) (victim string) {
	var loads, calls, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		deadline := time.Now().Add(40 * time.Second)
		for i := 0; i < 2000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			page, err := k.loadPage(web.String())
			loads.Add(1)
			if err != nil {
				failed.Add(100)
				calls.Add(100)
				firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			calls.Add(int64(page.Calls))
			failed.Add(int64(page.Errors))
			if page.Errors > 0 {
				firstErr.CompareAndSwap(nil, page.FirstError)
			}
		}
	}()
	eventuallyK(t, 10*time.Second, func() string {
		if loads.Load() < 2 {
			return "the load has not started"
		}
		return ""
	})
	victim = data[0].Name
	k.kubectl(t, nil, "-n", "stocks", "delete", "pod", victim, "--wait=false")
	k.rolledOut(t, "stockdata", 3, true)
	after := loads.Load()
	eventuallyK(t, 20*time.Second, func() string {
		select {
		case <-ended:
			return ""
		default:
		}
		if loads.Load() < after+2 {
			return "two page loads after the replacement"
		}
		return ""
	})
	close(stop)
	<-ended
	if loads.Load() < after+2 {
		t.Fatalf("the load ended (%d page loads) before two page loads after the replacement", loads.Load())
	}
	// A replica that goes away refuses connections: a request that never reached an app is
	// resent to another endpoint (Resilience), so no call is lost.
	t.Logf("deleting StockData pod %s under load: %d of %d calls failed over %d page loads (first error: %v)",
		victim, failed.Load(), calls.Load(), loads.Load(), firstErr.Load())
	if failed.Load() != 0 {
		t.Errorf("%d calls failed while a StockData pod was deleted, want none", failed.Load())
	}
	return victim
}

// eventuallyK polls cond every 100 ms until it returns "" or bound passes, then fails t with
// the last reason.
func eventuallyK(t testing.TB, bound time.Duration, cond func() string) {
	t.Helper()
	poll(t, bound, 100*time.Millisecond, cond)
}

// poll runs cond every interval until it returns "" or bound passes, then fails t with the
// last reason: the one wait of the package's tests.
func poll(t testing.TB, bound, interval time.Duration, cond func() string) {
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
		time.Sleep(interval)
	}
}

// podCapture records, like tcpdump -i on the node's bridge and its ports, the IP payload of
// the frames between a set of client pods and a set of server pods, each direction apart, with
// a raw AF_PACKET socket in the node's namespace. Frames bridged between pods pass the
// bridge's ports (the pods' veths), not its own device, so it listens on every link of the
// namespace but loopback (the control plane's plaintext etcd traffic names pods too).
type podCapture struct {
	t                *testing.T
	fd               int
	clients, servers map[netip.Addr]bool
	quit             atomic.Bool
	mu               sync.Mutex
	calls, answers   bytes.Buffer
	done             chan struct{}
}

func addrsOf(ps []corev1.Pod) map[netip.Addr]bool {
	m := map[netip.Addr]bool{}
	for _, p := range ps {
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				m[a] = true
			}
		}
	}
	return m
}

// capture captures between clients and servers until stop (or t's end).
func (k *kube) capture(t *testing.T, clients, servers []corev1.Pod) *podCapture {
	t.Helper()
	c := &podCapture{t: t, clients: addrsOf(clients), servers: addrsOf(servers), done: make(chan struct{})}
	err := k.c.NodeNS.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		tv := unix.Timeval{Usec: 50000} // lets the reader notice stop
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		// Veths hand over GSO frames of up to 64 KiB: the default 208 KiB buffer holds three,
		// and a reader delayed on a busy machine would lose the rest (seen: 200 bytes kept of
		// a page load). Drops are counted all the same (stop).
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL)})
	})
	if err != nil {
		t.Fatalf("capturing in the node's namespace: %v", err)
	}
	lo, err := loopbackIndex(k.c.NodeNS)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		// Larger than any frame, GSO's 64 KiB ones included: a cut frame could hide a marker.
		frame := make([]byte, 1<<18)
		for !c.quit.Load() {
			n, from, err := unix.Recvfrom(c.fd, frame, 0)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Ifindex == lo {
				continue
			}
			src, dst, payload, ok := ipPayload(frame[:n])
			if !ok {
				continue
			}
			c.mu.Lock()
			switch {
			case c.clients[src] && c.servers[dst]:
				c.calls.Write(payload)
			case c.servers[src] && c.clients[dst]:
				c.answers.Write(payload)
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.stop() })
	return c
}

func loopbackIndex(ns *netns.NS) (int, error) {
	var idx int
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName("lo")
		if err == nil {
			idx = ifc.Index
		}
		return err
	})
	return idx, err
}

// ipPayload returns the addresses and the IP payload of an Ethernet frame of IPv4 or IPv6.
func ipPayload(f []byte) (src, dst netip.Addr, payload []byte, ok bool) {
	if len(f) < 14 {
		return src, dst, nil, false
	}
	switch uint16(f[12])<<8 | uint16(f[13]) {
	case unix.ETH_P_IP:
		if len(f) < 34 || len(f) < 14+int(f[14]&0x0f)*4 {
			return src, dst, nil, false
		}
		return netip.AddrFrom4([4]byte(f[26:30])), netip.AddrFrom4([4]byte(f[30:34])), f[14+int(f[14]&0x0f)*4:], true
	case unix.ETH_P_IPV6:
		if len(f) < 54 {
			return src, dst, nil, false
		}
		return netip.AddrFrom16([16]byte(f[22:38])), netip.AddrFrom16([16]byte(f[38:54])), f[54:], true
	}
	return src, dst, nil, false
}

// stop ends the capture and returns what it recorded: the clients' calls and the servers'
// answers.
func (c *podCapture) stop() (calls, answers []byte) {
	if !c.quit.Swap(true) {
		<-c.done
		// The kernel's count of frames it could not queue: a capture with drops may have
		// missed what it looks for, either way.
		if st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil && st.Drops > 0 {
			c.t.Errorf("the capture dropped %d of %d frames: it cannot judge what crossed the bridge", st.Drops, st.Packets)
		}
		unix.Close(c.fd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls.Bytes()), slices.Clone(c.answers.Bytes())
}

// describe shows the cluster's pods and events, for a failure's message.
func describe(ctx context.Context, c *kubecluster.Cluster) string {
	out, _ := exec.CommandContext(ctx, filepath.Join(c.BinDir, "kubectl"), "--kubeconfig", c.Kubeconfig, "get", "pods,svc,endpointslices,events", "-A", "-o", "wide").CombinedOutput()
	return string(out)
}
