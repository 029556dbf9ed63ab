package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/controller/webhook"
	"github.com/detourmesh/detour/inject"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// objects decodes a YAML stream into its objects keyed kind/namespace/name, as canonical JSON.
func objects(t *testing.T, stream string) map[string]string {
	t.Helper()
	out := map[string]string{}
	dec := yaml.NewDecoder(strings.NewReader(stream))
	for {
		var o map[string]any
		if err := dec.Decode(&o); err != nil {
			if err.Error() == "EOF" {
				return out
			}
			t.Fatalf("decoding manifests: %v", err)
		}
		if o == nil {
			continue
		}
		meta, _ := o["metadata"].(map[string]any)
		key := fmt.Sprintf("%v/%v/%v", o["kind"], meta["namespace"], meta["name"])
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		out[key] = string(b)
	}
}

// subset reports whether every field of want is in got with the same value, and every element
// of a list in got's list, in order: the API server adds defaults (and, to every container, the
// ServiceAccount's API token mount) to what a webhook patched in, but never takes away.
func subset(want, got any) bool {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return false
		}
		for k, v := range w {
			if !subset(v, g[k]) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok {
			return false
		}
		j := 0
		for i := range w {
			for j < len(g) && !subset(w[i], g[j]) {
				j++
			}
			if j == len(g) {
				return false
			}
			j++
		}
		return true
	}
	return reflect.DeepEqual(want, got)
}

func asJSON(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	json.Unmarshal(b, &out)
	return out
}

// byName finds the list element named name.
func byName(list any, name string) any {
	l, _ := list.([]any)
	for _, e := range l {
		if m, ok := e.(map[string]any); ok && m["name"] == name {
			return e
		}
	}
	return nil
}

// TestInstallCheckInject is the user's path on a cluster: detour install | kubectl apply -f -
// creates every object (and kubectl apply -k deploy/ finds them the same); the controller, run on
// the host with the webhook at a loopback URL, makes detour check pass; detour inject on the
// StockKube manifests, applied, gives pods the webhook mutated exactly as the golden patches say;
// injecting twice equals once; an unannotated pod is untouched; an annotated namespace fails
// closed while the controller is down; and detour check fails with a hint when the webhook's
// caBundle is wrong, until the controller puts it right.
func TestInstallCheckInject(t *testing.T) {
	ctx := context.Background()
	caDir := newCA(t)
	manifests, report, err := detour(nil, "install", "--ca-dir", caDir)
	if err != nil {
		t.Fatalf("detour install: %v\n%s", err, report)
	}

	t.Run("install and the kustomize base give the same objects", func(t *testing.T) {
		installed := objects(t, manifests)
		base := objects(t, kubectl(t, nil, "kustomize", "../../deploy"))
		secret := "Secret/detour/detour-ca"
		if _, ok := installed[secret]; !ok {
			t.Fatalf("detour install has no %s: %v", secret, keys(installed))
		}
		delete(installed, secret)
		if !reflect.DeepEqual(installed, base) {
			t.Fatalf("detour install (without the Secret) and kubectl kustomize deploy/ differ:\ninstall %v\nbase    %v", keys(installed), keys(base))
		}
	})
	t.Run("kubectl apply creates every object, apply -k finds them unchanged", func(t *testing.T) {
		out := kubectl(t, []byte(manifests), "apply", "-f", "-")
		want := len(objects(t, manifests))
		if n := strings.Count(out, " created"); n != want {
			t.Fatalf("kubectl apply created %d objects, want %d:\n%s", n, want, out)
		}
		out = kubectl(t, nil, "apply", "-k", "../../deploy")
		if n := strings.Count(out, " unchanged"); n != want-1 || strings.Contains(out, "created") || strings.Contains(out, "configured") {
			t.Fatalf("kubectl apply -k deploy/ after detour install, want %d unchanged:\n%s", want-1, out)
		}
	})
	t.Cleanup(func() {
		// Cluster-wide objects outlive the test's namespaces: the next test must not meet them.
		kubectlErr([]byte(manifests), "delete", "--ignore-not-found", "--wait=false", "-f", "-")
	})

	// The controller runs as its ServiceAccount, with the RBAC deploy/ gives it and nothing more.
	asController := serviceAccountKubeconfig(t, "detour", "detour-controller")
	port := freePort(t)
	url := fmt.Sprintf("https://127.0.0.1:%d%s", port, webhook.InjectPath)
	hook := []string{"--kubeconfig", asController, "--webhook-listen", fmt.Sprintf("127.0.0.1:%d", port), "--webhook-url", url, "--webhook-ips", "127.0.0.1"}
	ctrl := startController(t, caDir, hook...)
	ctrl.waitLog(t, "webhook configuration updated")

	check := func() (string, error) {
		out, errOut, err := detour(nil, "check", "--kubeconfig", cluster.Kubeconfig)
		return out + errOut, err
	}
	t.Run("detour check passes", func(t *testing.T) {
		eventually(t, 20*time.Second, func() string {
			if out, err := check(); err != nil {
				return fmt.Sprintf("detour check: %v\n%s", err, out)
			}
			return ""
		})
		out, _ := check()
		t.Logf("detour check:\n%s", out)
		for _, name := range []string{"kubernetes-api", "trust-anchor", "issuer", "webhook-registered", "webhook-ca-bundle", "controller-ready", "injection"} {
			if !regexpLine(out, name, "ok") {
				t.Errorf("detour check has no ok line for %s:\n%s", name, out)
			}
		}
	})

	authority, err := ca.Load(caDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("the controller's RBAC lets it review a proxy's token", func(t *testing.T) {
		ns := namespace(t, "rbac", nil)
		serviceAccount(t, ns, "app")
		id := "spiffe://cluster.local/ns/rbac/sa/app"
		if cert, err := certifyAt(t, ctrl.addr, authority, id, serviceToken(t, ns, "app", inject.TokenAudience)); err != nil || cert.URIs[0].String() != id {
			t.Fatalf("Certify through a controller running as its ServiceAccount: %v, %v", cert, err)
		}
	})
	anchorPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: authority.TrustAnchor().Raw}))
	injected, report, err := detour(nil, "inject", "../../deploy/examples/stockkube/")
	if err != nil {
		t.Fatalf("detour inject: %v\n%s", err, report)
	}
	t.Run("injecting twice equals once", func(t *testing.T) {
		again, _, err := detour([]byte(injected), "inject", "-")
		if err != nil || again != injected {
			t.Fatalf("detour inject on its own output changed it (%v):\n%s", err, again)
		}
		if !strings.Contains(report, "2 pod template(s) changed") {
			t.Errorf("inject report: %s", report)
		}
	})
	t.Cleanup(func() { client.CoreV1().Namespaces().Delete(ctx, "stocks", metav1.DeleteOptions{}) })
	kubectl(t, []byte(injected), "apply", "-f", "-")
	t.Run("applying the injected manifests again changes nothing", func(t *testing.T) {
		out := kubectl(t, []byte(injected), "apply", "-f", "-")
		if strings.Contains(out, "configured") || strings.Contains(out, "created") {
			t.Fatalf("second apply:\n%s", out)
		}
	})

	t.Run("the pods the controller-manager makes are mutated exactly as the golden patches say", func(t *testing.T) {
		cfg := inject.Config{TrustAnchorPEM: anchorPEM, Sidecar: inject.Native}
		for _, app := range []struct {
			name string
			n    int
		}{{"stockdata", 2}, {"stockweb", 1}} {
			var pods []corev1.Pod
			eventually(t, 30*time.Second, func() string {
				l, err := client.CoreV1().Pods("stocks").List(ctx, metav1.ListOptions{LabelSelector: "app=" + app.name})
				if err != nil {
					return err.Error()
				}
				pods = l.Items
				if len(pods) != app.n {
					return fmt.Sprintf("%d %s pods, want %d", len(pods), app.name, app.n)
				}
				return ""
			})
			// The patch for the Deployment's template, as the webhook computes it for its pods.
			d, err := client.AppsV1().Deployments("stocks").Get(ctx, app.name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			tmpl, _ := json.Marshal(d.Spec.Template)
			ops, skip, err := inject.Patch(tmpl, cfg)
			if err != nil || skip != "" {
				t.Fatalf("patch for %s: %v %s", app.name, err, skip)
			}
			golden(t, filepath.Join("testdata", app.name+".patch.golden"), ops, anchorPEM)
			for _, p := range pods {
				got := asJSON(t, p).(map[string]any)
				spec := got["spec"].(map[string]any)
				for _, op := range ops {
					want := asJSON(t, op.Value)
					var items []any
					if l, ok := want.([]any); ok {
						items = l
					} else {
						items = []any{want}
					}
					list := spec[strings.Split(strings.TrimPrefix(op.Path, "/spec/"), "/")[0]]
					for _, it := range items {
						name := it.(map[string]any)["name"].(string)
						if g := byName(list, name); !subset(it, g) {
							w, _ := json.MarshalIndent(it, "", "  ")
							gg, _ := json.MarshalIndent(g, "", "  ")
							t.Errorf("pod %s: %s %s is not what the patch adds:\nwant %s\ngot %s", p.Name, op.Path, name, w, gg)
						}
					}
				}
				var names []string
				for _, c := range p.Spec.InitContainers {
					names = append(names, c.Name)
				}
				if strings.Join(names, ",") != inject.InitContainer+","+inject.ProxyContainer {
					t.Errorf("pod %s: init containers %v, want detour-init then the native sidecar", p.Name, names)
				}
			}
		}
	})

	t.Run("the API server accepts what inject --manual writes", func(t *testing.T) {
		manual, report, err := detour(nil, "inject", "--manual", "--trust-anchor", filepath.Join(caDir, "ca.crt"), "../../deploy/examples/stockkube/")
		if err != nil {
			t.Fatalf("detour inject --manual: %v\n%s", err, report)
		}
		out := kubectl(t, []byte(manual), "apply", "--dry-run=server", "-f", "-")
		if n := strings.Count(out, "deployment.apps/"); n != 2 || !strings.Contains(out, "configured (server dry run)") {
			t.Fatalf("server dry run of the manually injected Deployments:\n%s", out)
		}
	})
	plain := namespace(t, "plain", nil)
	t.Run("an unannotated pod is untouched", func(t *testing.T) {
		p, err := client.CoreV1().Pods(plain).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "plain"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Spec.InitContainers) != 0 || len(p.Spec.Containers) != 1 || len(p.Spec.Volumes) != 1 {
			t.Fatalf("an unannotated pod was changed: init %v, containers %d, volumes %v", p.Spec.InitContainers, len(p.Spec.Containers), p.Spec.Volumes)
		}
	})

	closed := namespace(t, "closed", map[string]string{inject.AnnotationInject: inject.Enabled})
	t.Run("a pod of an annotated namespace is injected", func(t *testing.T) {
		eventually(t, 20*time.Second, func() string {
			p, err := client.CoreV1().Pods(closed).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "app-"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				return err.Error()
			}
			if len(p.Spec.InitContainers) != 2 {
				return fmt.Sprintf("init containers %v", p.Spec.InitContainers)
			}
			return ""
		})
	})

	// The controller goes away; someone breaks the caBundle.
	ctrl.stop()
	other := newCA(t)
	otherCA, err := ca.Load(other)
	if err != nil {
		t.Fatal(err)
	}
	wrong := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherCA.TrustAnchor().Raw})
	patch, _ := json.Marshal([]map[string]any{
		{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": wrong},
		{"op": "replace", "path": "/webhooks/1/clientConfig/caBundle", "value": wrong},
	})
	kubectl(t, nil, "patch", "mutatingwebhookconfiguration", webhook.ConfigurationName, "--type=json", "-p", string(patch))

	t.Run("an annotated namespace fails closed without the controller, others open", func(t *testing.T) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "app-"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}
		if _, err := client.CoreV1().Pods(closed).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err == nil || !strings.Contains(err.Error(), webhook.NamespacesWebhook) {
			t.Errorf("a pod in the annotated namespace was admitted without the webhook: %v", err)
		}
		pod.Annotations = map[string]string{inject.AnnotationInject: inject.Enabled}
		if p, err := client.CoreV1().Pods(plain).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil || len(p.Spec.InitContainers) != 0 {
			t.Errorf("a pod opting in elsewhere should be admitted unchanged while the webhook fails: %v", err)
		}
	})
	t.Run("detour check fails with a hint when the caBundle is wrong", func(t *testing.T) {
		out, err := check()
		if err == nil {
			t.Fatalf("detour check passed with a wrong caBundle:\n%s", out)
		}
		t.Logf("detour check with a wrong caBundle and no controller:\n%s", out)
		if !regexpLine(out, "webhook-ca-bundle", "failed") || !strings.Contains(out, "hint: the API server will refuse the controller's certificate") {
			t.Errorf("detour check does not say what is wrong:\n%s", out)
		}
	})
	t.Run("the controller puts the caBundle right and detour check passes again", func(t *testing.T) {
		startController(t, caDir, hook...)
		eventually(t, 20*time.Second, func() string {
			if out, err := check(); err != nil {
				return fmt.Sprintf("detour check: %v\n%s", err, out)
			}
			return ""
		})
	})
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates as ServiceAccount ns/sa with
// a token from the TokenRequest API, as the controller's pod would.
func serviceAccountKubeconfig(t *testing.T, ns, sa string) string {
	t.Helper()
	tok := serviceToken(t, ns, sa, "https://kubernetes.default.svc.cluster.local")
	path := filepath.Join(t.TempDir(), sa+".kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: %s, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: %s}}]
current-context: test
`, cluster.Server, cluster.CAFile, sa, tok, sa)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// regexpLine reports whether out has a line starting with name whose second column is result.
func regexpLine(out, name, result string) bool {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == name && f[1] == result {
			return true
		}
	}
	return false
}

// golden compares ops, with the run's trust anchor replaced by a placeholder, with file.
func golden(t *testing.T, file string, ops []inject.Op, anchorPEM string) {
	t.Helper()
	got, _ := json.MarshalIndent(ops, "", "  ")
	anchorJSON, _ := json.Marshal(anchorPEM)
	got = bytes.ReplaceAll(got, anchorJSON[1:len(anchorJSON)-1], []byte("<the trust anchor, PEM>"))
	got = append(got, '\n')
	if *update {
		os.MkdirAll(filepath.Dir(file), 0o755)
		os.WriteFile(file, got, 0o644)
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the patch differs from %s:\n%s", file, got)
	}
}

func keys(m map[string]string) []string {
	k := make([]string, 0, len(m))
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return slices.Clip(k)
}
