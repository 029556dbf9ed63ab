package webhook

import (
	"encoding/json"
	"strings"
	"testing"

	admregv1 "k8s.io/api/admissionregistration/v1"
)

// TestDesired: a configuration as deploy/ installs it gets the bundle and the selectors; one
// already right gets nothing; a URL replaces the service reference.
func TestDesired(t *testing.T) {
	svc := &admregv1.ServiceReference{Namespace: "detour", Name: "detour-controller"}
	cur := &admregv1.MutatingWebhookConfiguration{Webhooks: []admregv1.MutatingWebhook{
		{Name: NamespacesWebhook, ClientConfig: admregv1.WebhookClientConfig{Service: svc}},
		{Name: PodsWebhook, ClientConfig: admregv1.WebhookClientConfig{Service: svc}},
		{Name: "someone-else.example.com"},
	}}
	ops := Desired(cur, []byte("PEM"), []string{"stocks", "web"}, "detour", "")
	b, _ := json.Marshal(ops)
	for _, want := range []string{
		`{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"UEVN"}`,
		`{"op":"add","path":"/webhooks/0/namespaceSelector","value":{"matchExpressions":[{"key":"kubernetes.io/metadata.name","operator":"In","values":["stocks","web"]}]}}`,
		`{"op":"add","path":"/webhooks/1/namespaceSelector","value":{"matchExpressions":[{"key":"kubernetes.io/metadata.name","operator":"NotIn","values":["kube-system","kube-public","kube-node-lease","detour","stocks","web"]}]}}`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("ops %s\nlack %s", b, want)
		}
	}
	if strings.Contains(string(b), "/webhooks/2") {
		t.Errorf("another webhook was touched: %s", b)
	}
	// Apply them by hand and ask again: nothing left to do.
	for i := range cur.Webhooks[:2] {
		cur.Webhooks[i].ClientConfig.CABundle = []byte("PEM")
		json.Unmarshal(mustJSON(ops[len(ops)/2*i+1].Value), &cur.Webhooks[i].NamespaceSelector)
	}
	if again := Desired(cur, []byte("PEM"), []string{"stocks", "web"}, "detour", ""); len(again) != 0 {
		t.Errorf("a configuration already right still gets %v", again)
	}
	none := Desired(cur, []byte("PEM"), nil, "detour", "https://127.0.0.1:8443/inject")
	b, _ = json.Marshal(none)
	if !strings.Contains(string(b), `"values":["none.detour.io"]`) || !strings.Contains(string(b), `"path":"/webhooks/0/clientConfig","value":{"url":"https://127.0.0.1:8443/inject","caBundle":"UEVN"}`) {
		t.Errorf("no annotated namespace and a URL: %s", b)
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }
