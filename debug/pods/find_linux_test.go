package pods

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fakeNode writes a /proc and /run/netns with the given processes: argv, env and the name of
// the namespace file each one's ns/net is (a shared name shares the inode).
type fakeProc struct {
	pid       int
	argv, env []string
	netns     string
	detour    bool
}

func fakeNode(t *testing.T, procs []fakeProc, named map[string]string) Finder {
	t.Helper()
	root := t.TempDir()
	proc, run, nsfiles := filepath.Join(root, "proc"), filepath.Join(root, "netns"), filepath.Join(root, "nsfs")
	for _, d := range []string{proc, run, nsfiles} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, data string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(proc, "stat"), "cpu 1 2 3\nbtime 1700000000\n")
	nsfile := func(name string) string {
		p := filepath.Join(nsfiles, name)
		if _, err := os.Stat(p); err != nil {
			write(p, name)
		}
		return p
	}
	for name, file := range named {
		if err := os.Link(nsfile(file), filepath.Join(run, name)); err != nil {
			t.Fatal(err)
		}
	}
	exes := map[string]bool{}
	for _, p := range procs {
		dir := filepath.Join(proc, fmt.Sprint(p.pid))
		write(filepath.Join(dir, "cmdline"), strings.Join(p.argv, "\x00")+"\x00")
		write(filepath.Join(dir, "environ"), strings.Join(p.env, "\x00"))
		write(filepath.Join(dir, "stat"), fmt.Sprintf("%d (detour) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0", p.pid, 100*60))
		write(filepath.Join(dir, "status"), "Uid:\t2102\t2102\t2102\t2102\n")
		exe := filepath.Join(root, fmt.Sprintf("bin-%v", p.detour))
		write(exe, "")
		exes[exe] = p.detour
		if err := os.Symlink(exe, filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(nsfile(p.netns), filepath.Join(dir, "ns", "net")); err != nil {
			t.Fatal(err)
		}
	}
	return Finder{Proc: proc, NetnsDir: run, IsDetour: func(path string) bool {
		target, _ := os.Readlink(path)
		return exes[target]
	}}
}

func TestFindListsTheProxiesAndTheirPods(t *testing.T) {
	f := fakeNode(t, []fakeProc{
		{pid: 30, argv: []string{"detour", "proxy", "--identity", "spiffe://cluster.local/ns/stocks/sa/stockdata"}, netns: "a", detour: true},
		{pid: 10, argv: []string{"/usr/bin/detour", "proxy"}, env: []string{"DETOUR_POD_NAME=stockweb", "DETOUR_POD_NAMESPACE=stocks"}, netns: "b", detour: true},
		{pid: 20, argv: []string{"detour", "proxy"}, netns: "c", detour: false}, // another program called detour
		{pid: 40, argv: []string{"detour", "init"}, netns: "a", detour: true},   // not a proxy
		{pid: 50, argv: []string{"stockdata", "--listen", ":8080"}, netns: "a"}, // the app beside it
	}, map[string]string{"dt-demo-stockdata-0": "a", "dt-demo-stockweb": "b", "unmeshed": "c"})
	found, err := f.Find()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range found {
		got = append(got, fmt.Sprintf("%d %s/%s %s uid=%d", p.PID, p.Namespace, p.Name, p.NetNS, p.UID))
	}
	want := []string{"30 stocks/ dt-demo-stockdata-0 uid=2102", "10 stocks/stockweb dt-demo-stockweb uid=2102"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("found %q, want %q", got, want)
	}
	if started := found[0].Started; !started.Equal(time.Unix(1700000000+60, 0)) {
		t.Errorf("started %v, want a minute after boot", started)
	}

	names, err := f.Names()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		arg, want, err string
	}{
		{arg: "stockweb", want: "dt-demo-stockweb"},
		{arg: "stocks/stockweb", want: "dt-demo-stockweb"},
		{arg: "dt-demo-stockdata-0", want: "dt-demo-stockdata-0"},
		{arg: "unmeshed", want: "unmeshed"}, // a namespace without a proxy is still a target
		{arg: "other/stockweb", err: `no meshed pod "other/stockweb" on this node (found the proxy PID 30 (network namespace dt-demo-stockdata-0); stocks/stockweb (PID 10`},
		{arg: "nothing", err: "a POD is a pod name, namespace/name, a PID"},
	} {
		k, err := matchName(tt.arg, found, names)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: %v, want an error containing %q", tt.arg, err, tt.err)
			}
			continue
		}
		if err != nil || names[k][0] != tt.want {
			t.Errorf("%s: %v %v, want %s", tt.arg, names[k], err, tt.want)
		}
	}
}

func TestAPodNameInTwoNamespacesIsAmbiguous(t *testing.T) {
	f := fakeNode(t, []fakeProc{
		{pid: 1, argv: []string{"detour", "proxy", "--pod-name", "web", "--pod-namespace", "a"}, netns: "a", detour: true},
		{pid: 2, argv: []string{"detour", "proxy", "--pod-name", "web", "--pod-namespace", "b"}, netns: "b", detour: true},
	}, nil)
	found, err := f.Find()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := matchName("web", found, nil); err == nil || !strings.Contains(err.Error(), `"web" names 2 pods`) {
		t.Fatalf("ambiguous name: %v", err)
	}
	if _, err := matchName("b/web", found, nil); err != nil {
		t.Fatalf("namespace/name: %v", err)
	}
}
