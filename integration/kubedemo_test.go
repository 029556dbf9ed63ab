package integration

import (
	"context"
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
// runs) to its end and checks what it shows: the Server column with one replica serving all
// 100 calls without the mesh, both serving calls once injected, all three once scaled; and
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
	var out syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err = kubedemo.Run(ctx, kubedemo.Options{
		Bin: filepath.Dir(detourBin), Manifests: "../deploy/examples/stockkube", Images: imgs,
		// Under the default root, so that a crashed run's cluster is swept by the next.
		Name: "itdemo", Duration: time.Millisecond, Out: &out,
	})
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(kubecluster.DefaultRoot, "itdemo")); !os.IsNotExist(err) {
		t.Errorf("the demo's cluster directory is still there (%v)", err)
	}
	// Each table follows its step: "[N] ..." then progress, "done in", then the rows.
	row := regexp.MustCompile(`^\s+(stockdata-\S+)\s+(\d+)`)
	tables := map[string][]string{}
	step := ""
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "[") {
			step = line[:strings.IndexByte(line, ']')+1]
			continue
		}
		if m := row.FindStringSubmatch(line); m != nil {
			tables[step] = append(tables[step], m[2])
		}
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
