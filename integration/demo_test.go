package integration

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/detourmesh/detour/netns/nstest"
)

func TestDemoShowsTheCaptureAndCleansUp(t *testing.T) {
	nstest.RequireRoot(t)
	out, err := exec.Command(detourBin, "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("detour demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"captured on app's outbound port 7140, original destination 198.18.0.3:8080",
		`curl got: "hello from web, you are 198.18.0.2:`,
		"removing every namespace, rule and process of the demo",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(list), "dt-demo-") {
		t.Fatalf("the demo left namespaces behind:\n%s", list)
	}
}
