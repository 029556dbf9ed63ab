package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"time"

	admregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/detourmesh/detour/inject"
)

// Names in the MutatingWebhookConfiguration that deploy/ installs.
const (
	// ConfigurationName is the MutatingWebhookConfiguration the controller keeps current.
	ConfigurationName = "detour-injector"
	// NamespacesWebhook serves the namespaces annotated detour.io/inject: enabled, listed in
	// its namespaceSelector by the controller, with failurePolicy Fail: a pod there is never
	// admitted without the mesh because the controller was down.
	NamespacesWebhook = "namespaces.inject.detour.io"
	// PodsWebhook serves every other namespace (pods that opt in themselves) with
	// failurePolicy Ignore: the cluster keeps creating pods while the controller is away.
	PodsWebhook = "pods.inject.detour.io"
	// NoNamespace stands for an empty list in a selector (In and NotIn need a value): a label
	// value no namespace name can have.
	NoNamespace = "none.detour.io"
)

// SystemNamespaces are never injected: the control plane's, and the controller's own (a
// controller whose pods needed its own webhook could not start).
var SystemNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}

// Reconciler keeps ConfigurationName current: every Detour webhook's caBundle is the trust
// anchor (which signs the webhook's serving certificate), NamespacesWebhook selects exactly the
// namespaces annotated detour.io/inject: enabled and PodsWebhook all others but the system
// ones. It watches namespaces and the configuration, so a kubectl apply that resets the bundle
// or a namespace annotated later is put right within a second. Namespaces also answers the
// webhook's namespace lookups from the same cache.
type Reconciler struct {
	client    kubernetes.Interface
	caBundle  []byte
	ownNS     string
	url       string
	log       *slog.Logger
	nsFactory informers.SharedInformerFactory
	whFactory informers.SharedInformerFactory
	ns        cache.SharedIndexInformer
	wh        cache.SharedIndexInformer
	dirty     chan struct{}
	lastPatch string // the last patch applied, so one that does not stick is not applied in a loop
}

// ReconcilerOptions configure a Reconciler.
type ReconcilerOptions struct {
	// CABundle is the PEM the API server verifies the webhook with (the trust anchor).
	CABundle []byte
	// Namespace is the controller's own namespace, never injected (default detour).
	Namespace string
	// URL, when set, replaces the webhooks' service reference with this URL: for a controller
	// running outside the cluster (development, the API-only test cluster).
	URL    string
	Logger *slog.Logger
}

// NewReconciler prepares a Reconciler; Run starts it.
func NewReconciler(client kubernetes.Interface, o ReconcilerOptions) (*Reconciler, error) {
	if o.Namespace == "" {
		o.Namespace = "detour"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	r := &Reconciler{client: client, caBundle: o.CABundle, ownNS: o.Namespace, url: o.URL, log: o.Logger, dirty: make(chan struct{}, 1)}
	r.nsFactory = informers.NewSharedInformerFactory(client, 0)
	r.ns = r.nsFactory.Core().V1().Namespaces().Informer()
	r.whFactory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
		lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", ConfigurationName).String()
	}))
	r.wh = r.whFactory.Admissionregistration().V1().MutatingWebhookConfigurations().Informer()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { r.mark() },
		UpdateFunc: func(_, _ any) { r.mark() },
		DeleteFunc: func(any) { r.mark() },
	}
	for _, inf := range []cache.SharedIndexInformer{r.ns, r.wh} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (r *Reconciler) mark() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// Namespace returns a namespace's annotations for the webhook, from the cache, or from the API
// when the cache has not seen it yet (a namespace made a moment before its first pod).
func (r *Reconciler) Namespace(name string) (map[string]string, error) {
	if o, ok, _ := r.ns.GetStore().GetByKey(name); ok {
		return o.(*corev1.Namespace).Annotations, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ns, err := r.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return ns.Annotations, nil
}

// Synced reports whether the namespace cache has synced.
func (r *Reconciler) Synced() bool { return r.ns.HasSynced() }

// Run keeps the configuration current until ctx ends. A failed patch is retried with backoff
// (logged once per distinct error).
func (r *Reconciler) Run(ctx context.Context) error {
	r.nsFactory.Start(ctx.Done())
	r.whFactory.Start(ctx.Done())
	defer r.nsFactory.Shutdown()
	defer r.whFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), r.ns.HasSynced, r.wh.HasSynced) {
		return nil
	}
	r.mark()
	backoff := 0 * time.Second
	lastErr := ""
	for {
		var retry <-chan time.Time
		if backoff > 0 {
			retry = time.After(backoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.dirty:
		case <-retry:
		}
		if err := r.reconcile(ctx); err != nil {
			if err.Error() != lastErr {
				r.log.Warn("keeping the webhook configuration current", "configuration", ConfigurationName, "err", err)
				lastErr = err.Error()
			}
			backoff = min(max(2*backoff, 200*time.Millisecond), 10*time.Second)
			continue
		}
		backoff, lastErr = 0, ""
	}
}

// reconcile patches the configuration when it differs from what it should be.
func (r *Reconciler) reconcile(ctx context.Context) error {
	o, ok, _ := r.wh.GetStore().GetByKey(ConfigurationName)
	if !ok {
		return fmt.Errorf("%s does not exist: apply deploy/ (detour install | kubectl apply -f -)", ConfigurationName)
	}
	cur := o.(*admregv1.MutatingWebhookConfiguration)
	var annotated []string
	for _, n := range r.ns.GetStore().List() {
		ns := n.(*corev1.Namespace)
		if ns.Annotations[inject.AnnotationInject] == inject.Enabled && ns.Name != r.ownNS && !slices.Contains(SystemNamespaces, ns.Name) {
			annotated = append(annotated, ns.Name)
		}
	}
	slices.Sort(annotated)
	ops := Desired(cur, r.caBundle, annotated, r.ownNS, r.url)
	if len(ops) == 0 {
		r.lastPatch = ""
		return nil
	}
	// The test of the resourceVersion makes a concurrent change fail the patch rather than be
	// overwritten; the informer then brings the new version and the worker tries again.
	ops = append([]patchOp{{Op: "test", Path: "/metadata/resourceVersion", Value: cur.ResourceVersion}}, ops...)
	body, err := json.Marshal(ops[1:])
	if err != nil {
		return err
	}
	if string(body) == r.lastPatch {
		return fmt.Errorf("the same change again after it was applied (does the API server store another form of it?): %s", body)
	}
	r.lastPatch = string(body)
	if body, err = json.Marshal(ops); err != nil {
		return err
	}
	if _, err := r.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Patch(ctx, ConfigurationName, types.JSONPatchType, body, metav1.PatchOptions{FieldManager: "detour-controller"}); err != nil {
		return fmt.Errorf("patching %s: %w", ConfigurationName, err)
	}
	r.log.Info("webhook configuration updated", "configuration", ConfigurationName, "annotated_namespaces", annotated)
	return nil
}

type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// Desired returns the JSON patch operations that make cur's Detour webhooks right: caBundle,
// the namespace selectors for the annotated namespaces, and (url non-empty) the client config.
// It is pure, for tests and detour check.
func Desired(cur *admregv1.MutatingWebhookConfiguration, caBundle []byte, annotated []string, ownNS, url string) []patchOp {
	var ops []patchOp
	for i, w := range cur.Webhooks {
		base := fmt.Sprintf("/webhooks/%d", i)
		var sel *metav1.LabelSelector
		switch w.Name {
		case NamespacesWebhook:
			in := annotated
			if len(in) == 0 {
				in = []string{NoNamespace}
			}
			sel = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpIn, Values: in}}}
		case PodsWebhook:
			out := append(append(slices.Clone(SystemNamespaces), ownNS), annotated...)
			sel = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: out}}}
		default:
			continue
		}
		if !bytes.Equal(w.ClientConfig.CABundle, caBundle) {
			ops = append(ops, patchOp{"add", base + "/clientConfig/caBundle", caBundle})
		}
		if url != "" && (w.ClientConfig.URL == nil || *w.ClientConfig.URL != url || w.ClientConfig.Service != nil) {
			ops = append(ops, patchOp{"replace", base + "/clientConfig", admregv1.WebhookClientConfig{URL: &url, CABundle: caBundle}})
		}
		if !sameSelector(w.NamespaceSelector, sel) {
			ops = append(ops, patchOp{"add", base + "/namespaceSelector", sel})
		}
	}
	return ops
}

func sameSelector(a, b *metav1.LabelSelector) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}
