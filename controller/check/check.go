// Package check is `detour check`: it asks the cluster whether Detour's control plane is
// installed and working, the way a user would find out by hand (kubectl get, kubectl logs, a
// test pod), and says for each check what is wrong and what to do. Each check is one Result; Run
// runs them all, in order, even after a failure, so one run shows every problem.
package check

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	admregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourmesh/detour/controller/webhook"
	"github.com/detourmesh/detour/inject"
	"github.com/detourmesh/detour/spiffe"
)

// Result is one check's outcome.
type Result struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

// Options configure Run.
type Options struct {
	// Namespace of the control plane; default detour.
	Namespace string
	// ProbeNamespace is where the injection check creates its dry-run pod; default "default".
	ProbeNamespace string
	// ExpiryWarning: a trust anchor or issuer expiring sooner fails its check; default 30 days.
	ExpiryWarning time.Duration
	Now           func() time.Time
}

// Names the installation uses (deploy/).
const (
	controllerName = "detour-controller"
	caSecret       = "detour-ca"
)

// Run runs every check against the cluster behind client.
func Run(ctx context.Context, client kubernetes.Interface, o Options) []Result {
	if o.Namespace == "" {
		o.Namespace = "detour"
	}
	if o.ProbeNamespace == "" {
		o.ProbeNamespace = "default"
	}
	if o.ExpiryWarning == 0 {
		o.ExpiryWarning = 30 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var out []Result
	v, err := client.Discovery().ServerVersion()
	if err != nil {
		return append(out, Result{Name: "kubernetes-api", Detail: err.Error(),
			Hint: "check the kubeconfig (--kubeconfig, $KUBECONFIG) and that the API server is up: kubectl version"})
	}
	out = append(out, Result{Name: "kubernetes-api", OK: true, Detail: "reachable, " + v.GitVersion})

	anchor, r := trustAnchor(ctx, client, o)
	out = append(out, r...)
	cfg, r1 := webhookConfig(ctx, client, anchor)
	out = append(out, r1...)
	out = append(out, controllerReady(ctx, client, o, cfg))
	out = append(out, injects(ctx, client, o))
	return out
}

// trustAnchor checks the Secret the controller runs on: the anchor and the issuer, valid now
// and not expiring soon, the issuer signed by the anchor.
func trustAnchor(ctx context.Context, client kubernetes.Interface, o Options) (*x509.Certificate, []Result) {
	fail := func(detail, hint string) (*x509.Certificate, []Result) {
		return nil, []Result{{Name: "trust-anchor", Detail: detail, Hint: hint}}
	}
	sec, err := client.CoreV1().Secrets(o.Namespace).Get(ctx, caSecret, metav1.GetOptions{})
	if err != nil {
		return fail(fmt.Sprintf("Secret %s/%s: %v", o.Namespace, caSecret, err),
			"install Detour: detour install | kubectl apply -f - (it makes the Secret), or create it from detour-controller ca init's files")
	}
	anchor, err := parseCert(sec.Data["ca.crt"])
	if err != nil {
		return fail(fmt.Sprintf("Secret %s/%s ca.crt: %v", o.Namespace, caSecret, err), "the Secret must hold ca.crt, issuer.crt and issuer.key as detour-controller ca init writes them")
	}
	issuer, err := parseCert(sec.Data["issuer.crt"])
	if err != nil {
		return fail(fmt.Sprintf("Secret %s/%s issuer.crt: %v", o.Namespace, caSecret, err), "the Secret must hold ca.crt, issuer.crt and issuer.key as detour-controller ca init writes them")
	}
	now := o.Now()
	var out []Result
	for _, c := range []struct {
		name string
		cert *x509.Certificate
		hint string
	}{
		{"trust-anchor", anchor, "make a new trust anchor and roll it out (every proxy trusts the old one until restarted): detour-controller ca init"},
		{"issuer", issuer, "rotate the issuer: detour-controller ca rotate-issuer --dir DIR, then update the Secret"},
	} {
		left := c.cert.NotAfter.Sub(now)
		switch {
		case now.Before(c.cert.NotBefore) || left <= 0:
			out = append(out, Result{Name: c.name, Detail: fmt.Sprintf("not valid now (valid %s to %s)", c.cert.NotBefore.UTC().Format(time.DateOnly), c.cert.NotAfter.UTC().Format(time.DateOnly)), Hint: c.hint})
		case left < o.ExpiryWarning:
			out = append(out, Result{Name: c.name, Detail: fmt.Sprintf("expires in %d days (%s)", int(left.Hours()/24), c.cert.NotAfter.UTC().Format(time.DateOnly)), Hint: c.hint})
		default:
			out = append(out, Result{Name: c.name, OK: true, Detail: fmt.Sprintf("valid until %s (%d days)", c.cert.NotAfter.UTC().Format(time.DateOnly), int(left.Hours()/24))})
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	if _, err := issuer.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		out[1] = Result{Name: "issuer", Detail: "not signed by the trust anchor: " + err.Error(), Hint: "issuer.crt and ca.crt must come from the same CA directory"}
	}
	return anchor, out
}

// webhookConfig checks that detour-injector exists with both webhooks, and that their caBundle
// is the trust anchor, which signs the controller's serving certificate.
func webhookConfig(ctx context.Context, client kubernetes.Interface, anchor *x509.Certificate) (*admregv1.MutatingWebhookConfiguration, []Result) {
	cfg, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhook.ConfigurationName, metav1.GetOptions{})
	if err != nil {
		return nil, []Result{{Name: "webhook-registered", Detail: err.Error(), Hint: "install Detour: detour install | kubectl apply -f -"}}
	}
	out := []Result{}
	var missing []string
	for _, name := range []string{webhook.NamespacesWebhook, webhook.PodsWebhook} {
		if find(cfg, name) == nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		out = append(out, Result{Name: "webhook-registered", Detail: fmt.Sprintf("%s lacks %s", webhook.ConfigurationName, strings.Join(missing, ", ")), Hint: "apply deploy/webhook.yaml again (detour install | kubectl apply -f -)"})
		return cfg, out
	}
	out = append(out, Result{Name: "webhook-registered", OK: true, Detail: fmt.Sprintf("%s with %s and %s", webhook.ConfigurationName, webhook.NamespacesWebhook, webhook.PodsWebhook)})
	bundleHint := "the controller sets caBundle to its trust anchor when it starts and whenever it changes: is the controller running? (kubectl -n detour logs deploy/detour-controller)"
	for _, name := range []string{webhook.NamespacesWebhook, webhook.PodsWebhook} {
		w := find(cfg, name)
		certs, err := parseBundle(w.ClientConfig.CABundle)
		switch {
		case err != nil:
			out = append(out, Result{Name: "webhook-ca-bundle", Detail: fmt.Sprintf("%s: %v", name, err), Hint: bundleHint})
			return cfg, out
		case anchor != nil && !containsCert(certs, anchor):
			out = append(out, Result{Name: "webhook-ca-bundle", Detail: fmt.Sprintf("%s: the caBundle does not hold the trust anchor (SHA-256 %s…) that signs the controller's serving certificate", name, spiffe.Fingerprint(anchor.Raw)[:16]),
				Hint: "the API server will refuse the controller's certificate; " + bundleHint})
			return cfg, out
		}
	}
	out = append(out, Result{Name: "webhook-ca-bundle", OK: true, Detail: "both webhooks trust the trust anchor"})
	return cfg, out
}

// controllerReady asks the controller itself: through the webhook URL when the configuration
// has one (verifying it against the caBundle, as the API server does), else by its Deployment's
// status.
func controllerReady(ctx context.Context, client kubernetes.Interface, o Options, cfg *admregv1.MutatingWebhookConfiguration) Result {
	const name = "controller-ready"
	if cfg != nil {
		if w := find(cfg, webhook.PodsWebhook); w != nil && w.ClientConfig.URL != nil {
			return readyAtURL(ctx, *w.ClientConfig.URL, w.ClientConfig.CABundle)
		}
	}
	d, err := client.AppsV1().Deployments(o.Namespace).Get(ctx, controllerName, metav1.GetOptions{})
	if err != nil {
		return Result{Name: name, Detail: err.Error(), Hint: "install Detour: detour install | kubectl apply -f -"}
	}
	if d.Status.AvailableReplicas < 1 {
		return Result{Name: name, Detail: fmt.Sprintf("deployment %s/%s has %d of %d replicas available", o.Namespace, controllerName, d.Status.AvailableReplicas, *d.Spec.Replicas),
			Hint: fmt.Sprintf("kubectl -n %s describe deploy/%s; kubectl -n %s logs deploy/%s", o.Namespace, controllerName, o.Namespace, controllerName)}
	}
	return Result{Name: name, OK: true, Detail: fmt.Sprintf("deployment %s/%s: %d available", o.Namespace, controllerName, d.Status.AvailableReplicas)}
}

func readyAtURL(ctx context.Context, hook string, bundle []byte) Result {
	const name = "controller-ready"
	u, err := url.Parse(hook)
	if err != nil {
		return Result{Name: name, Detail: fmt.Sprintf("webhook URL %q: %v", hook, err)}
	}
	u.Path = "/ready"
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	resp, err := hc.Do(req)
	if err != nil {
		hint := "is the controller running and listening there?"
		var uerr x509.UnknownAuthorityError
		if strings.Contains(err.Error(), "x509") || errors.As(err, &uerr) {
			hint = "the controller's serving certificate does not verify against the caBundle: the controller sets the bundle at start; restart it, or check its --ca-dir"
		}
		return Result{Name: name, Detail: fmt.Sprintf("GET %s: %v", u, err), Hint: hint}
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Result{Name: name, Detail: fmt.Sprintf("GET %s: %s", u, resp.Status), Hint: "the controller is up but not ready: see its log"}
	}
	return Result{Name: name, OK: true, Detail: "ready at " + u.String() + ", its certificate verified against the caBundle"}
}

// injects creates a pod asking for the mesh with dryRun (nothing is stored) and looks for the
// proxy in what the API server returns: the webhook was called, trusted and answered.
func injects(ctx context.Context, client kubernetes.Interface, o Options) Result {
	const name = "injection"
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "detour-check-", Annotations: map[string]string{inject.AnnotationInject: inject.Enabled}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "check", Image: "detour-check:none"}}},
	}
	got, err := client.CoreV1().Pods(o.ProbeNamespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		hint := "the webhook refused or could not be called: see the controller's log"
		if apierrors.IsInternalError(err) || strings.Contains(err.Error(), "x509") {
			hint = "the API server could not call or trust the webhook: check the caBundle and the controller"
		}
		return Result{Name: name, Detail: "a dry-run pod was not admitted: " + err.Error(), Hint: hint}
	}
	for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
		if c.Name == inject.ProxyContainer {
			return Result{Name: name, OK: true, Detail: fmt.Sprintf("a dry-run pod in namespace %s got %s", o.ProbeNamespace, inject.ProxyContainer)}
		}
	}
	return Result{Name: name, Detail: fmt.Sprintf("a dry-run pod annotated %s: %s was admitted without %s", inject.AnnotationInject, inject.Enabled, inject.ProxyContainer),
		Hint: "the API server could not reach or trust the webhook (pods outside annotated namespaces fail open): check the caBundle, the controller's log and the API server's"}
}

func find(cfg *admregv1.MutatingWebhookConfiguration, name string) *admregv1.MutatingWebhook {
	for i := range cfg.Webhooks {
		if cfg.Webhooks[i].Name == name {
			return &cfg.Webhooks[i]
		}
	}
	return nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	certs, err := parseBundle(b)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

func parseBundle(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no PEM certificate")
	}
	return out, nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if bytes.Equal(x.Raw, c.Raw) {
			return true
		}
	}
	return false
}
