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

func TestParseFlagsReadsTheProxyAsDetourProxyWould(t *testing.T) {
	def := Flags{OutboundPort: 7140, InboundPort: 7143, AdminPort: 7190}
	with := func(f func(*Flags)) Flags { c := def; f(&c); return c }
	tests := []struct {
		name string
		argv []string
		env  []string
		want Flags
		err  string
	}{
		{"defaults", []string{"detour", "proxy"}, nil, def, ""},
		{"both flag forms", []string{"/bin/detour", "proxy", "--admin-port=7191", "--identity", "spiffe://cluster.local/ns/a/sa/b", "--pod-name", "web-1"}, nil,
			with(func(f *Flags) { f.AdminPort, f.Identity, f.PodName = 7191, "spiffe://cluster.local/ns/a/sa/b", "web-1" }), ""},
		{"a long name after one dash is no flag to pflag", []string{"detour", "proxy", "-admin-port", "7000"}, nil, def, ""},
		{"the environment fills what the command line leaves", []string{"detour", "proxy", "--pod-name", "cli"},
			[]string{"DETOUR_POD_NAME=env", "DETOUR_POD_NAMESPACE=stocks", "DETOUR_ADMIN_PORT=7300", "PATH=/bin", "DETOUR_UNKNOWN=1"},
			with(func(f *Flags) { f.PodName, f.PodNamespace, f.AdminPort = "cli", "stocks", 7300 }), ""},
		{"the last of a repeated flag wins", []string{"detour", "proxy", "--admin-port", "1", "--admin-port", "2"}, nil, with(func(f *Flags) { f.AdminPort = 2 }), ""},
		{"other flags and their values are skipped", []string{"detour", "proxy", "-o", "json", "--drain-timeout", "1s", "--cores=2", "--discovery", "controller:198.18.0.1:7086"}, nil,
			with(func(f *Flags) { f.Discovery = "controller:198.18.0.1:7086" }), ""},
		{"nothing after --", []string{"detour", "proxy", "--", "--admin-port", "1"}, nil, def, ""},
		{"a flag without its value", []string{"detour", "proxy", "--admin-port"}, nil, def, ""},
		{"a bad port", []string{"detour", "proxy", "--inbound-port", "0"}, nil, Flags{}, "--inbound-port"},
		{"a bad port from the environment", []string{"detour", "proxy"}, []string{"DETOUR_OUTBOUND_PORT=x"}, Flags{}, "DETOUR_OUTBOUND_PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFlags(tt.argv, tt.env)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want one naming %s", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	for _, argv := range [][]string{{"detour"}, {"detour", "init"}, {"detour", "debug", "proxy"}, {"sh", "-c", "detour proxy"}} {
		if IsProxyCommand(argv) {
			t.Errorf("%q taken for a proxy", argv)
		}
	}
}

// FuzzParseFlags: a process's command line and environment are anyone's to write.
func FuzzParseFlags(f *testing.F) {
	f.Add("detour\x00proxy\x00--admin-port=7191\x00-o\x00json", "DETOUR_POD_NAME=a")
	f.Add("detour\x00proxy\x00--\x00--x", "DETOUR_=")
	f.Add("detour\x00proxy\x00-admin-port", "DETOUR_ADMIN_PORT=0")
	f.Fuzz(func(t *testing.T, argv, env string) {
		fl, err := ParseFlags(strings.Split(argv, "\x00"), strings.Split(env, "\x00"))
		if err == nil && (fl.AdminPort == 0 || fl.InboundPort == 0 || fl.OutboundPort == 0) {
			t.Fatalf("port 0 accepted: %+v", fl)
		}
	})
}

func TestIdentityNamespace(t *testing.T) {
	for id, want := range map[string][2]string{
		"spiffe://cluster.local/ns/stocks/sa/stockweb": {"stocks", "stockweb"},
		"spiffe://td/ns/a/sa/b/extra":                  {"", ""},
		"spiffe://td/other/a/sa/b":                     {"", ""},
		"https://td/ns/a/sa/b":                         {"", ""},
		"spiffe://td/ns//sa/b":                         {"", ""},
		"":                                             {"", ""},
	} {
		ns, sa := IdentityNamespace(id)
		if [2]string{ns, sa} != want {
			t.Errorf("%q: %q, %q; want %v", id, ns, sa, want)
		}
	}
}

func TestProcFields(t *testing.T) {
	stat := "4242 (detour (proxy) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 10 5 0 0 20 0 9 0 123456 1000000 500 18446744073709551615"
	if n, ok := startTicks(stat); !ok || n != 123456 {
		t.Errorf("startTicks = %d, %v; want 123456 (a command name with spaces and parentheses)", n, ok)
	}
	if _, ok := startTicks("4242 (short) S 1"); ok {
		t.Error("startTicks read a truncated stat")
	}
	if uid := statusUID("Name:\tdetour\nUid:\t2102\t2102\t2102\t2102\n"); uid != 2102 {
		t.Errorf("statusUID = %d", uid)
	}
	if uid := statusUID("Name:\tx\n"); uid != -1 {
		t.Errorf("statusUID without Uid = %d", uid)
	}
}

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

func TestArgumentKinds(t *testing.T) {
	for arg, want := range map[string]argKind{
		"1234": argPID, "/run/netns/x": argPath, "./ns": argPath, "stocks/web": argNamespace, "web": argName, "web1": argName,
	} {
		if got := kindOf(arg); got != want {
			t.Errorf("%q: kind %d, want %d", arg, got, want)
		}
	}
}
