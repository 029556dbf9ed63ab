package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/detourmesh/detour/internal/kubecluster"
	"github.com/detourmesh/detour/internal/kubedemo"
	"github.com/detourmesh/detour/internal/syncbuf"
	"github.com/detourmesh/detour/netns/nstest"
)

// TestDemoKubernetes runs `make demo-k8s`'s workflow (kubedemo.Run, what bin/kubecluster demo
// runs) to its end, then ends it as Ctrl-C does, and checks what it showed: the Server column with one replica serving all
// 100 calls without the mesh, both serving calls once injected, all three once scaled; the
// four meshed pods, ready, with their ServiceAccounts' identities in detour debug pods; and
// that the cluster is gone afterwards.
func TestDemoKubernetes(t *testing.T) {
	nstest.RequireRoot(t)
	if _, err := kubecluster.BinDir(); err != nil {
		t.Fatal(err)
	}
	imgs, err := kubecluster.RepoImages()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Ctrl-C once it is set up and waiting, as a user ends it.
	out := &cancelOn{marker: "Ctrl-C removes it", cancel: cancel}
	err = kubedemo.Run(ctx, kubedemo.Options{
		Bin: filepath.Dir(detourBin), Manifests: "../deploy/examples/stockkube", Images: imgs,
		// Under the default root, so that a crashed run's cluster is swept by the next.
		Name: "itdemo", Out: out,
	})
	t.Logf("demo output:\n%s", out.buf.String())
	if err != nil {
		t.Fatalf("the demo, ended once set up, returned %v", err)
	}
	if _, err := os.Stat(filepath.Join(kubecluster.DefaultRoot, "itdemo")); !os.IsNotExist(err) {
		t.Errorf("the demo's cluster directory is still there (%v)", err)
	}
	// Each table follows its step: "[N] ..." then progress, "done in", then the rows.
	row := regexp.MustCompile(`^\s+(stockdata-\S+)\s+(\d+)`)
	// detour debug pods: POD PID NETNS READY ... IDENTITY (namespace/sa/account)
	meshed := regexp.MustCompile(`^\s+stocks/(stockdata|stockweb)-\S+\s.*\syes\s.*\sstocks/sa/(stockdata|stockweb)$`)
	tables := map[string][]string{}
	step, listed := "", 0
	for _, line := range strings.Split(out.buf.String(), "\n") {
		if strings.HasPrefix(line, "[") {
			step = line[:strings.IndexByte(line, ']')+1]
			continue
		}
		if m := row.FindStringSubmatch(line); m != nil {
			tables[step] = append(tables[step], m[2])
		}
		if m := meshed.FindStringSubmatch(line); step == "[6]" && m != nil && m[1] == m[2] {
			listed++
		}
	}
	if listed != 4 {
		t.Errorf("step [6] (detour debug pods) lists %d ready StockKube pods with their identity, want 4", listed)
	}
	want := map[string]func([]string) bool{
		"[3]": func(c []string) bool {
			return len(c) == 2 && (c[0] == "100" && c[1] == "0" || c[0] == "0" && c[1] == "100")
		},
		"[4]": func(c []string) bool { return len(c) == 2 && c[0] != "0" && c[1] != "0" },
		"[5]": func(c []string) bool { return len(c) == 3 && c[0] != "0" && c[1] != "0" && c[2] != "0" },
	}
	for s, ok := range want {
		if !ok(tables[s]) {
			t.Errorf("step %s shows calls %v per StockData pod", s, tables[s])
		}
	}
}

// TestDemoKubernetesInterrupted stops the demo (as Ctrl-C does: its context ends) while it
// applies StockKube: it returns context.Canceled and its cluster is gone, node namespace
// included.
func TestDemoKubernetesInterrupted(t *testing.T) {
	nstest.RequireRoot(t)
	imgs, err := kubecluster.RepoImages()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := &cancelOn{marker: "\n[3] ", cancel: cancel}
	err = kubedemo.Run(ctx, kubedemo.Options{
		Bin: filepath.Dir(detourBin), Manifests: "../deploy/examples/stockkube", Images: imgs,
		Name: "itdemo-int", Out: out,
	})
	t.Logf("demo output:\n%s", out.buf.String())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the interrupted demo returned %v, want context.Canceled", err)
	}
	if !strings.Contains(out.buf.String(), "removing the cluster ... ") {
		t.Errorf("the interrupted demo did not say it removed the cluster")
	}
	if _, err := os.Stat(filepath.Join(kubecluster.DefaultRoot, "itdemo-int")); !os.IsNotExist(err) {
		t.Errorf("the demo's cluster directory is still there (%v)", err)
	}
	if _, err := os.Stat("/run/netns/dtk-itdemo-int.node"); !os.IsNotExist(err) {
		t.Errorf("the demo's node namespace is still there (%v)", err)
	}
}

// cancelOn records what is written and calls cancel once marker has been written.
type cancelOn struct {
	buf    syncbuf.Buffer
	marker string
	cancel func()
}

func (w *cancelOn) Write(b []byte) (int, error) {
	n, err := w.buf.Write(b)
	if strings.Contains(w.buf.String(), w.marker) {
		w.cancel()
	}
	return n, err
}
