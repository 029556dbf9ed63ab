package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestSidecarBinaryHasNoKubernetesClient fails when anything cmd/detour imports pulls in
// client-go, the Kubernetes API types or the test cluster harness: the sidecar's RSS follows its
// binary's size, and those packages would add megabytes to both. What needs the API belongs in
// cmd/detour-controller.
func TestSidecarBinaryHasNoKubernetesClient(t *testing.T) {
	//lint:ignore SA1019 a test binary runs where it was built, so its GOROOT has the go command
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, "list", "-deps", "-tags", "grpcnotrace", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed only %d packages: %s", len(deps), out)
	}
	for _, p := range deps {
		if strings.HasPrefix(p, "k8s.io/") || strings.HasPrefix(p, "sigs.k8s.io/") || strings.Contains(p, "/internal/kubecluster") {
			t.Errorf("cmd/detour imports %s: move what needs it to cmd/detour-controller", p)
		}
	}
}
