package webhook

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/detourmesh/detour/inject"
)

// InjectPath is where the webhook configuration points the API server.
const InjectPath = "/inject"

// maxReview bounds an AdmissionReview body: a pod is at most a few hundred KiB (etcd's object
// limit is 1.5 MiB).
const maxReview = 8 << 20

// Handler serves the webhook: POST InjectPath with an admission.k8s.io/v1 AdmissionReview, and
// GET /ready (200 once ready() says so, for the controller's readiness probe and detour check).
// Namespace returns a namespace's annotations; an error fails the review (the API server then
// applies the webhook's failurePolicy).
type Handler struct {
	Config    inject.Config
	Namespace func(name string) (map[string]string, error)
	Ready     func() bool
	Logger    *slog.Logger
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/ready" && r.Method == http.MethodGet:
		if h.Ready != nil && !h.Ready() {
			http.Error(w, "starting: discovery has not synced yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	case r.URL.Path == InjectPath && r.Method == http.MethodPost:
		h.review(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (h *Handler) review(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReview+1))
	if err != nil {
		http.Error(w, "reading the review: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) > maxReview {
		http.Error(w, "the review is too large", http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("want an admission.k8s.io/v1 AdmissionReview with a request (%v)", err), http.StatusBadRequest)
		return
	}
	req := review.Request
	var nsAnn map[string]string
	if req.Namespace != "" && h.Namespace != nil {
		if nsAnn, err = h.Namespace(req.Namespace); err != nil {
			h.Logger.Warn("webhook: reading the namespace", "namespace", req.Namespace, "err", err)
			http.Error(w, fmt.Sprintf("reading namespace %s: %v", req.Namespace, err), http.StatusServiceUnavailable)
			return
		}
	}
	resp := Mutate(req, nsAnn, h.Config)
	switch {
	case !resp.Allowed:
		h.Logger.Info("webhook: pod refused", "namespace", req.Namespace, "name", podName(req), "reason", resp.Result.Message)
	case resp.Patch != nil:
		h.Logger.Info("webhook: pod injected", "namespace", req.Namespace, "name", podName(req))
	case len(resp.Warnings) > 0:
		h.Logger.Info("webhook: pod not injected", "namespace", req.Namespace, "name", podName(req), "reason", resp.Warnings[0])
	}
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// podName is the pod's name, or its generateName prefix (pods of a ReplicaSet have no name yet
// when they are admitted).
func podName(req *admissionv1.AdmissionRequest) string {
	if req.Name != "" {
		return req.Name
	}
	var m struct {
		Metadata struct {
			GenerateName string `json:"generateName"`
		} `json:"metadata"`
	}
	json.Unmarshal(req.Object.Raw, &m)
	return m.Metadata.GenerateName
}
