package nstest_test

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// TestRequireRoot re-runs itself as an unprivileged user to see what a
// non-root run does with and without DETOUR_REQUIRE_ROOT=1.
func TestRequireRoot(t *testing.T) {
	if os.Getenv("NSTEST_CHILD") == "1" {
		nstest.RequireRoot(t)
		return
	}
	nstest.RequireRoot(t) // root is needed to switch users
	bin := unprivilegedCopy(t)

	for _, tc := range []struct {
		name     string
		env      string
		wantFail bool
		wantOut  string
	}{
		{"a non-root run skips", "DETOUR_REQUIRE_ROOT=", false, "--- SKIP"},
		{"a non-root run fails when CI requires root", "DETOUR_REQUIRE_ROOT=1", true, "--- FAIL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, "-test.run=^TestRequireRoot$", "-test.v")
			cmd.Env = append(os.Environ(), "NSTEST_CHILD=1", tc.env)
			cmd.Dir = filepath.Dir(bin)
			netns.AsUID(cmd, 65534, 65534)
			out, err := cmd.CombinedOutput()
			if failed := err != nil; failed != tc.wantFail || !strings.Contains(string(out), tc.wantOut) {
				t.Errorf("run as uid 65534 with %s: err %v, want failure %v and %q in:\n%s", tc.env, err, tc.wantFail, tc.wantOut, out)
			}
		})
	}
}

// unprivilegedCopy copies the test binary where uid 65534 can run it (the
// go build cache is private to root).
func unprivilegedCopy(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "dt-nstest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "nstest.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestNew(t *testing.T) {
	var ns *netns.NS
	t.Run("a fresh namespace is made", func(t *testing.T) {
		ns = nstest.New(t)
		if !strings.HasPrefix(ns.Name, "dt-t") {
			t.Errorf("name %s does not start with dt-t", ns.Name)
		}
		if _, err := netns.Open(ns.Name); err != nil {
			t.Error(err)
		}
		if other := nstest.New(t); other.Name == ns.Name {
			t.Errorf("two calls gave the same name %s", ns.Name)
		}
	})
	if _, err := os.Stat(ns.Path()); !os.IsNotExist(err) {
		t.Errorf("%s is still there after its test ended: %v", ns.Path(), err)
	}
}

func TestTopology(t *testing.T) {
	var prefix string
	t.Run("a fresh topology is made", func(t *testing.T) {
		topo := nstest.Topology(t)
		prefix = topo.Prefix
		if _, err := topo.AddPod("a"); err != nil {
			t.Fatal(err)
		}
	})
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix) {
			t.Errorf("%s is still listed after its test ended", line)
		}
	}
	if !strings.HasPrefix(prefix, "dt-t") {
		t.Errorf("prefix %q does not start with dt-t", prefix)
	}
}
