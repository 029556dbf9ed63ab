package pods

import (
	"strings"
	"testing"
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

func TestArgumentKinds(t *testing.T) {
	for arg, want := range map[string]argKind{
		"1234": argPID, "/run/netns/x": argPath, "./ns": argPath, "stocks/web": argNamespace, "web": argName, "web1": argName,
	} {
		if got := kindOf(arg); got != want {
			t.Errorf("%q: kind %d, want %d", arg, got, want)
		}
	}
}
