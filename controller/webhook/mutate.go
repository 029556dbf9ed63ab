// Package webhook is the controller's injection webhook: the API server sends it every Pod
// about to be created in the namespaces the MutatingWebhookConfiguration selects, and it answers
// with the JSON patch that adds Detour (package inject, the same patch `detour inject --manual`
// applies) when the pod or its namespace asks for the mesh. Mutate is the pure decision; the
// HTTP server around it is thin; Reconciler keeps the webhook configuration's CA bundle and
// namespace selectors current.
package webhook

import (
	"encoding/json"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourmesh/detour/inject"
)

// Mutate answers one admission request: the patch adding Detour to a Pod being created that
// asks for it (its own detour.io/inject annotation, else its namespace's, nsAnnotations), no
// patch for any other request. A pod that asks with a bad setting is refused with the reason,
// not admitted without the mesh it asked for; a pod that cannot be meshed (hostNetwork) is
// admitted unchanged with a warning kubectl shows.
func Mutate(req *admissionv1.AdmissionRequest, nsAnnotations map[string]string, cfg inject.Config) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		return resp
	}
	var meta struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(req.Object.Raw, &meta); err != nil {
		return deny(resp, http.StatusBadRequest, fmt.Sprintf("detour: cannot read the pod: %v", err))
	}
	want, _, err := inject.Wanted(meta.Metadata.Annotations, nsAnnotations)
	if err != nil {
		return deny(resp, http.StatusBadRequest, "detour: "+err.Error())
	}
	if !want {
		return resp
	}
	ops, skip, err := inject.Patch(req.Object.Raw, cfg)
	if err != nil {
		return deny(resp, http.StatusBadRequest, "detour: the pod asks for the mesh but "+err.Error())
	}
	if skip != "" {
		resp.Warnings = []string{"detour: not injected: " + skip}
		return resp
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return deny(resp, http.StatusInternalServerError, fmt.Sprintf("detour: encoding the patch: %v", err))
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	return resp
}

func deny(resp *admissionv1.AdmissionResponse, code int32, msg string) *admissionv1.AdmissionResponse {
	resp.Allowed = false
	resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: code, Message: msg, Reason: metav1.StatusReasonBadRequest}
	return resp
}
