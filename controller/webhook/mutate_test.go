package webhook

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/detourmesh/detour/inject"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var testConfig = inject.Config{TrustAnchorPEM: "-----BEGIN CERTIFICATE-----\nTEST-ANCHOR\n-----END CERTIFICATE-----\n"}

func podRequest(t *testing.T, raw []byte) *admissionv1.AdmissionRequest {
	var meta struct {
		Metadata struct{ Namespace string } `json:"metadata"`
	}
	json.Unmarshal(raw, &meta)
	return &admissionv1.AdmissionRequest{
		UID:       types.UID("0d1e2f3a-0000-4000-8000-000000000001"),
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: meta.Metadata.Namespace, Operation: admissionv1.Create,
		Object: runtime.RawExtension{Raw: raw},
	}
}

// TestMutateGolden: the webhook's answer for the pod of every workload kind (the pods in
// inject/testdata, as the API server sends them), as a golden file with the patch decoded. The
// patch is exactly inject.Patch's: the webhook and detour inject --manual add the same things.
func TestMutateGolden(t *testing.T) {
	files, _ := filepath.Glob("../../inject/testdata/pods/*.json")
	if len(files) < 8 {
		t.Fatalf("pod cases: %v", files)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			raw, _ := os.ReadFile(f)
			// The statefulset pod is not annotated itself: its namespace is.
			ns := map[string]string{}
			if name == "statefulset" {
				ns[inject.AnnotationInject] = inject.Enabled
			}
			resp := Mutate(podRequest(t, raw), ns, testConfig)
			var patch any
			if resp.Patch != nil {
				json.Unmarshal(resp.Patch, &patch)
				ops, _, _ := inject.Patch(raw, testConfig)
				want, _ := json.Marshal(ops)
				if !bytes.Equal(resp.Patch, want) {
					t.Errorf("the webhook's patch is not inject.Patch's")
				}
			}
			got, _ := json.MarshalIndent(map[string]any{
				"allowed": resp.Allowed, "result": resp.Result, "warnings": resp.Warnings,
				"patchType": resp.PatchType, "patch": patch,
			}, "", "  ")
			got = append(got, '\n')
			golden := filepath.Join("testdata", name+".response.golden")
			if *update {
				os.MkdirAll("testdata", 0o755)
				os.WriteFile(golden, got, 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("response differs from %s:\n%s", golden, got)
			}
		})
	}
}

// TestMutateLeavesOthersAlone: an unannotated pod, an opted-out pod, an update and another kind
// get no patch; a bad annotation value is refused with its name.
func TestMutateLeavesOthersAlone(t *testing.T) {
	plain := []byte(`{"metadata":{"name":"p"},"spec":{"containers":[{"name":"a"}]}}`)
	optOut := []byte(`{"metadata":{"name":"p","annotations":{"detour.io/inject":"disabled"}},"spec":{"containers":[{"name":"a"}]}}`)
	enabledNS := map[string]string{inject.AnnotationInject: inject.Enabled}
	for name, c := range map[string]struct {
		req *admissionv1.AdmissionRequest
		ns  map[string]string
	}{
		"an unannotated pod in an unannotated namespace": {podRequest(t, plain), nil},
		"a pod that opts out of an annotated namespace":  {podRequest(t, optOut), enabledNS},
		"an update": {func() *admissionv1.AdmissionRequest {
			r := podRequest(t, plain)
			r.Operation = admissionv1.Update
			return r
		}(), enabledNS},
		"a Deployment": {func() *admissionv1.AdmissionRequest {
			r := podRequest(t, plain)
			r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
			return r
		}(), enabledNS},
	} {
		resp := Mutate(c.req, c.ns, testConfig)
		if !resp.Allowed || resp.Patch != nil || resp.UID != c.req.UID {
			t.Errorf("%s: allowed %v, patch %s", name, resp.Allowed, resp.Patch)
		}
	}
	bad := []byte(`{"metadata":{"annotations":{"detour.io/inject":"yes"}},"spec":{"containers":[{"name":"a"}]}}`)
	if resp := Mutate(podRequest(t, bad), nil, testConfig); resp.Allowed || !strings.Contains(resp.Result.Message, inject.AnnotationInject) {
		t.Errorf("a bad annotation value: %+v", resp)
	}
}

// TestHandler: the HTTP server round-trips an AdmissionReview and refuses what is not one.
func TestHandler(t *testing.T) {
	var ready atomic.Bool
	h := &Handler{Config: testConfig, Ready: ready.Load,
		Namespace: func(string) (map[string]string, error) {
			return map[string]string{inject.AnnotationInject: inject.Enabled}, nil
		},
		Logger: testLogger(t)}
	srv := httptest.NewServer(h)
	defer srv.Close()
	raw, _ := os.ReadFile("../../inject/testdata/pods/job.json")
	body, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  podRequest(t, raw),
	})
	resp, err := http.Post(srv.URL+InjectPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var out admissionv1.AdmissionReview
	json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if out.Kind != "AdmissionReview" || out.Response == nil || !out.Response.Allowed || out.Response.Patch == nil {
		t.Fatalf("response %+v", out)
	}
	for _, bad := range []string{"", "{}", "[1]", `{"request":`} {
		resp, err := http.Post(srv.URL+InjectPath, "application/json", strings.NewReader(bad))
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body %q: %v %v", bad, resp.Status, err)
		}
	}
	if r, _ := http.Get(srv.URL + "/ready"); r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/ready before ready: %s", r.Status)
	}
	ready.Store(true)
	if r, _ := http.Get(srv.URL + "/ready"); r.StatusCode != http.StatusOK {
		t.Errorf("/ready: %s", r.Status)
	}
}
