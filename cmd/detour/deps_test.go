package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSidecarBinaryHasNoKubernetesClient fails when anything cmd/detour imports pulls in
// client-go or the Kubernetes API types: the sidecar's RSS follows its binary's size, and those
// packages would add several megabytes to both. What needs the API belongs in
// cmd/detour-controller.
func TestSidecarBinaryHasNoKubernetesClient(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-tags", "grpcnotrace", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed only %d packages: %s", len(deps), out)
	}
	for _, p := range deps {
		for _, banned := range []string{"k8s.io/client-go", "k8s.io/api/", "k8s.io/apimachinery"} {
			if strings.HasPrefix(p, banned) {
				t.Errorf("cmd/detour imports %s (%s...): move what needs it to cmd/detour-controller", p, banned)
			}
		}
	}
}
