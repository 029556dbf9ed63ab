package dashboard

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestShippedPrometheusConfigIsValid checks deploy/prometheus with promtool where it can:
// Debian's Prometheus is built without Kubernetes service discovery, so the cluster's file is
// only checked to keep the injector's port name.
func TestShippedPrometheusConfigIsValid(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("DETOUR_REQUIRE_ROOT") == "1" {
			t.Fatal("promtool is missing: apt-get install prometheus")
		}
		t.Skip("promtool is missing: apt-get install prometheus")
	}
	if out, err := exec.Command(promtool, "check", "config", "../../deploy/prometheus/demo.yml").CombinedOutput(); err != nil {
		t.Errorf("promtool check config demo.yml: %v\n%s", err, out)
	}
	k8s, err := os.ReadFile("../../deploy/prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(k8s), "regex: detour-admin") {
		t.Error("prometheus.yml does not keep the injector's detour-admin port")
	}
}
