// Package nstest gives root tests throw-away network namespaces and
// topologies that are removed when the test ends, and makes sure such tests
// fail rather than silently skip in CI. Import it only from _test.go files.
package nstest

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/detourmesh/detour/netns"
)

// counter makes names unique within the test binary; the pid makes them
// unique among test binaries running at the same time.
var counter atomic.Uint64

func uniqueName() string {
	return fmt.Sprintf("dt-t%d-%d", os.Getpid(), counter.Add(1))
}

// RequireRoot skips t unless it runs as root, or fails it instead when
// DETOUR_REQUIRE_ROOT=1 (CI must never skip a root test).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const why = "needs root to create network namespaces (run the tests as root, e.g. sudo go test)"
	if os.Getenv("DETOUR_REQUIRE_ROOT") == "1" {
		t.Fatal(why + "; DETOUR_REQUIRE_ROOT=1 forbids skipping")
	}
	t.Skip(why)
}

// New returns a fresh namespace "dt-t<pid>-<n>" with lo up, deleted when the
// test ends. The test must end the processes it starts in it.
func New(t testing.TB) *netns.NS {
	t.Helper()
	RequireRoot(t)
	ns, err := netns.Create(uniqueName())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

// Topology returns a fresh node-and-pods topology whose namespaces all
// start with "dt-t<pid>-<n>-", closed when the test ends.
func Topology(t testing.TB) *netns.Topology {
	t.Helper()
	RequireRoot(t)
	topo, err := netns.NewTopology(uniqueName() + "-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	return topo
}
