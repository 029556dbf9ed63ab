package kubecluster_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestSidecarHasNoClientGo guards the sidecar's size: the proxy's RSS follows its binary's
// size, so neither this package nor client-go and the Kubernetes API types may enter the
// import graph of cmd/detour.
func TestSidecarHasNoClientGo(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", "github.com/detourmesh/detour/cmd/detour").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	var bad []string
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/") || strings.HasPrefix(p, "sigs.k8s.io/") || strings.Contains(p, "/internal/kubecluster") {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		t.Errorf("cmd/detour imports %d Kubernetes packages, e.g. %v: keep them out of the sidecar's binary", len(bad), bad[:min(5, len(bad))])
	}
}
