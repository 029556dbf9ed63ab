package kubecluster_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// checkTokenReview gets a token for the default ServiceAccount with Detour's audience and has
// the API server review it, as the controller will; a token for another audience is refused.
func checkTokenReview(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, "default", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{"identity.detour.io"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	review := func(audience string) *authnv1.TokenReviewStatus {
		r, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return &r.Status
	}
	if st := review("identity.detour.io"); !st.Authenticated || st.User.Username != "system:serviceaccount:default:default" {
		t.Errorf("TokenReview of the default ServiceAccount's token = %+v, want authenticated as system:serviceaccount:default:default", st)
	}
	if st := review("another.example"); st.Authenticated {
		t.Errorf("TokenReview for another audience authenticated %+v", st.User)
	}
}

// checkWebhook registers a mutating webhook served on loopback by the test and sees the API
// server apply its patch to a new ConfigMap.
func checkWebhook(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		pt := admissionv1.PatchTypeJSONPatch
		review.Response = &admissionv1.AdmissionResponse{
			UID: review.Request.UID, Allowed: true, PatchType: &pt,
			Patch: []byte(`[{"op":"add","path":"/metadata/labels","value":{"mutated-by":"kubecluster-test"}}]`),
		}
		review.Request = nil
		json.NewEncoder(w).Encode(&review)
	}))
	t.Cleanup(srv.Close)
	url := srv.URL + "/mutate"
	none := admissionregv1.SideEffectClassNone
	fail := admissionregv1.Fail
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "kubecluster-test"},
		Webhooks: []admissionregv1.MutatingWebhook{{
			Name: "test.kubecluster.detour.io",
			ClientConfig: admissionregv1.WebhookClientConfig{
				URL:      &url,
				CABundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}),
			},
			Rules: []admissionregv1.RuleWithOperations{{
				Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule:       admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}},
			}},
			ObjectSelector:          &metav1.LabelSelector{MatchLabels: map[string]string{"mutate": "yes"}},
			SideEffects:             &none,
			FailurePolicy:           &fail,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server picks up a new webhook configuration within a moment; until then a
	// ConfigMap is created unmutated. Create (and remove) until one comes back mutated.
	waitFor(ctx, t, "a ConfigMap mutated by the webhook", func() (struct{}, bool) {
		cm, err := cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "hooked-", Labels: map[string]string{"mutate": "yes"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Logf("creating a ConfigMap: %v", err)
			return struct{}{}, false
		}
		return struct{}{}, cm.Labels["mutated-by"] == "kubecluster-test"
	})
}
