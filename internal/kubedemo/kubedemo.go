// Package kubedemo runs the seed's workflow on the one-node test cluster, for anyone who wants
// to see Detour on real Kubernetes (`make demo-k8s`): it starts the cluster, installs Detour
// (`detour install | kubectl apply -f -`), applies the StockKube manifests without the mesh,
// injects them (`detour inject ... | kubectl apply -f -`), scales StockData to 3, and prints
// StockWeb's Server column (each pod and its number of calls) at each step. It exists apart
// from package demo (namespaces only, no cluster) because it needs the cluster harness and
// client-go, which must stay out of the detour binary; bin/kubecluster runs it. Everything it
// starts goes when it ends, on Ctrl-C too (the harness stops the cluster by PID and removes
// its namespaces, mounts and cgroups).
package kubedemo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourmesh/detour/internal/kubecluster"
)

// Options configure Run.
type Options struct {
	// Bin holds the detour and detour-controller binaries (make build's bin/).
	Bin string
	// Manifests is the folder of the StockKube manifests (deploy/examples/stockkube).
	Manifests string
	// Images are the image archives the node imports (make image's bin/images/*.tar).
	Images []string
	// Name and Root of the cluster (kubecluster.Options); empty: "demo" under DefaultRoot.
	Name, Root string
	// Duration keeps the cluster running this long after the last step; 0: until ctx ends.
	Duration time.Duration
	// Out receives the progress and the tables.
	Out io.Writer
}

// Namespace is the StockKube manifests' namespace.
const Namespace = "stocks"

// Run runs the workflow and then keeps the cluster until ctx ends or o.Duration passes, and
// removes it. An error names the step that failed; a step cut short by ctx returns ctx.Err()
// (joined with any error removing the cluster).
func Run(ctx context.Context, o Options) (err error) {
	if o.Name == "" {
		o.Name = "demo"
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	files, err := filepath.Glob(filepath.Join(o.Manifests, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no StockKube manifests in %s (%v)", o.Manifests, err)
	}
	for _, b := range []string{"detour", "detour-controller"} {
		if _, err := exec.LookPath(filepath.Join(o.Bin, b)); err != nil {
			return fmt.Errorf("no %s in %s (make build): %w", b, o.Bin, err)
		}
	}
	d := &run{o: o, s: &steps{out: o.Out}}
	if _, err := kubecluster.Sweep(o.Root); err != nil {
		d.s.say("removing clusters of crashed runs: " + err.Error())
	}
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = ctx.Err() // interrupted, not failed
		}
		if d.c == nil {
			return
		}
		fmt.Fprintf(o.Out, "removing the cluster ... ")
		start := time.Now()
		if serr := d.c.Stop(); serr != nil {
			fmt.Fprintln(o.Out, "failed")
			err = errors.Join(err, serr)
			return
		}
		fmt.Fprintf(o.Out, "%s\n", time.Since(start).Round(time.Millisecond))
	}()
	if err := d.start(ctx); err != nil {
		return err
	}
	k := d.kubectlPath()
	if err := d.s.do("detour install | kubectl apply -f -, then detour check", func(progress func(string)) (string, error) {
		yaml, err := d.detour(ctx, nil, "install")
		if err != nil {
			return "", err
		}
		if _, err := d.kubectl(ctx, yaml, "apply", "-f", "-"); err != nil {
			return "", err
		}
		if err := d.waitPods(ctx, "detour", "app.kubernetes.io/name=detour-controller", 1, false, progress); err != nil {
			return "", err
		}
		// The controller puts its CA bundle into the webhook configuration once it runs.
		var out []byte
		err = d.poll(ctx, time.Minute, progress, func() (bool, string) {
			var cerr error
			out, cerr = d.detour(ctx, nil, "check", "--kubeconfig", d.c.Kubeconfig)
			return cerr == nil, "detour check: " + lastLine(string(out))
		})
		return string(out), err
	}); err != nil {
		return err
	}
	if err := d.s.do("kubectl apply -f "+o.Manifests+" (StockKube without the mesh)", func(progress func(string)) (string, error) {
		args := []string{"apply"}
		for _, f := range files {
			args = append(args, "-f", f)
		}
		if _, err := d.kubectl(ctx, nil, args...); err != nil {
			return "", err
		}
		return d.settle(ctx, 2, false, progress)
	}); err != nil {
		return err
	}
	if err := d.s.do("detour inject "+o.Manifests+" | kubectl apply -f - (StockKube in the mesh)", func(progress func(string)) (string, error) {
		yaml, err := d.detour(ctx, nil, append([]string{"inject"}, files...)...)
		if err != nil {
			return "", err
		}
		if _, err := d.kubectl(ctx, yaml, "apply", "-f", "-"); err != nil {
			return "", err
		}
		return d.settle(ctx, 2, true, progress)
	}); err != nil {
		return err
	}
	if err := d.s.do("kubectl scale deployment stockdata --replicas=3", func(progress func(string)) (string, error) {
		if _, err := d.kubectl(ctx, nil, "-n", Namespace, "scale", "deployment/stockdata", "--replicas=3"); err != nil {
			return "", err
		}
		return d.settle(ctx, 3, true, progress)
	}); err != nil {
		return err
	}
	if err := d.s.do("detour debug pods (on the node, from /proc): the meshed pods and the identities their proxies proved", func(func(string)) (string, error) {
		out, err := d.detour(ctx, nil, "debug", "pods")
		if err != nil {
			return "", err
		}
		// The node is this machine, which may run other proxies too: keep the header and
		// this cluster's pods.
		list, err := d.cs.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return "", err
		}
		ours := map[string]bool{}
		for _, p := range list.Items {
			ours[Namespace+"/"+p.Name] = true
		}
		var b strings.Builder
		for i, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); i == 0 || len(f) > 0 && ours[f[0]] {
				b.WriteString(line + "\n")
			}
		}
		return b.String(), nil
	}); err != nil {
		return err
	}
	d.s.say(fmt.Sprintf(`
The cluster keeps running%s; Ctrl-C removes it. Meanwhile:
  export KUBECONFIG=%s
  %s -n %s get pods
  ip netns exec %s curl http://%s/api/quotes
  %s debug pods`, forHow(o.Duration), d.c.Kubeconfig, k, Namespace, d.c.NodeNS.Name, d.web, filepath.Join(o.Bin, "detour")))
	if o.Duration > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(o.Duration):
		}
	} else {
		<-ctx.Done()
	}
	return nil
}

func forHow(d time.Duration) string {
	if d > 0 {
		return " for " + d.String()
	}
	return ""
}

// run is one run's state.
type run struct {
	o   Options
	s   *steps
	c   *kubecluster.Cluster
	cs  kubernetes.Interface
	web string // StockWeb's Service, CLUSTER-IP:80
}

func (d *run) start(ctx context.Context) error {
	return d.s.do("starting a one-node Kubernetes "+kubecluster.Version+" (etcd, API server, scheduler, kubelet, containerd, kube-proxy, CoreDNS) with the images of make image", func(progress func(string)) (string, error) {
		log := slog.New(progressHandler{progress: progress})
		c, err := kubecluster.Start(ctx, kubecluster.Options{Name: d.o.Name, Root: d.o.Root, Node: true, DNS: true, Images: d.o.Images, Logger: log})
		if err != nil {
			return "", err
		}
		d.c = c
		if d.cs, err = c.Client(); err != nil {
			return "", err
		}
		return fmt.Sprintf("node %s Ready, its network in namespace %s", kubecluster.NodeName, c.NodeNS.Name), nil
	})
}

// settle waits until StockData has replicas pods and StockWeb one, all Ready and meshed or
// not, none terminating, then loads the StockWeb page until every call is answered by those
// pods (and, meshed, by all of them: the proxy learns of a new replica within a moment), and
// returns the Server column.
func (d *run) settle(ctx context.Context, replicas int, meshed bool, progress func(string)) (string, error) {
	if err := d.waitPods(ctx, Namespace, "app=stockdata", replicas, meshed, progress); err != nil {
		return "", err
	}
	if err := d.waitPods(ctx, Namespace, "app=stockweb", 1, meshed, progress); err != nil {
		return "", err
	}
	if d.web == "" {
		svc, err := d.cs.CoreV1().Services(Namespace).Get(ctx, "stockweb", metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		d.web = net.JoinHostPort(svc.Spec.ClusterIP, "80")
	}
	var page quotes
	err := d.poll(ctx, 30*time.Second, progress, func() (bool, string) {
		var err error
		if page, err = d.load(ctx); err != nil {
			return false, "loading the StockWeb page: " + err.Error()
		}
		if page.Errors > 0 {
			return false, fmt.Sprintf("StockWeb page: %d of %d calls failed", page.Errors, page.Calls)
		}
		if meshed && len(page.Counts) < replicas {
			return false, fmt.Sprintf("StockWeb page: answered by %d of %d replicas", len(page.Counts), replicas)
		}
		return true, ""
	})
	if err != nil {
		return "", err
	}
	return d.table(ctx, page)
}

// table is the Server column of a page load: one row per StockData pod, its calls.
func (d *run) table(ctx context.Context, page quotes) (string, error) {
	list, err := d.cs.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=stockdata"})
	if err != nil {
		return "", err
	}
	var servers []string
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			servers = append(servers, p.Name)
		}
	}
	for s := range page.Counts {
		if !slices.Contains(servers, s) {
			servers = append(servers, s)
		}
	}
	slices.Sort(servers)
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tCALLS\t")
	for _, s := range servers {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", s, page.Counts[s], strings.Repeat("#", page.Counts[s]/2))
	}
	tw.Flush()
	return b.String(), nil
}

// quotes is StockWeb's /api/quotes.
type quotes struct {
	Counts map[string]int `json:"counts"`
	Calls  int            `json:"calls"`
	Errors int            `json:"errors"`
}

// load loads the StockWeb page once, through its Service, from the node's namespace.
func (d *run) load(ctx context.Context) (quotes, error) {
	var q quotes
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: d.c.NodeNS.DialContext}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.web+"/api/quotes", nil)
	if err != nil {
		return q, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return q, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
		return q, fmt.Errorf("reading StockWeb's answer (%s): %w", resp.Status, err)
	}
	return q, nil
}

// waitPods waits until the pods of selector in ns are want, all Ready, none terminating, and
// each with Detour's proxy or each without, as meshed says.
func (d *run) waitPods(ctx context.Context, ns, selector string, want int, meshed bool, progress func(string)) error {
	return d.poll(ctx, 2*time.Minute, progress, func() (bool, string) {
		list, err := d.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err.Error()
		}
		ready, other := 0, 0
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && hasProxy(p) == meshed && podReady(p) {
				ready++
			} else {
				other++
			}
		}
		mesh := ""
		if meshed {
			mesh = " meshed"
		}
		return ready == want && other == 0, fmt.Sprintf("%s: %d of %d%s pods Ready, %d others (starting or terminating)", selector, ready, want, mesh, other)
	})
}

func hasProxy(p corev1.Pod) bool {
	return slices.ContainsFunc(p.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == "detour-proxy" })
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// poll calls cond every 200 ms until it holds, reporting each new status through progress,
// for at most bound.
func (d *run) poll(ctx context.Context, bound time.Duration, progress func(string), cond func() (bool, string)) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		ok, status := cond()
		if ok {
			return nil
		}
		if status != last {
			progress(status)
			last = status
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %s)", ctx.Err(), status)
		case <-tick.C:
		}
	}
}

func (d *run) kubectlPath() string { return filepath.Join(d.c.BinDir, "kubectl") }

func (d *run) kubectl(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	cmd := d.c.Kubectl(ctx, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// detour runs bin/detour and returns its stdout (its stderr, on failure, in the error).
func (d *run) detour(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(d.o.Bin, "detour"), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("detour %s: %w\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
