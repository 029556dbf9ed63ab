package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/detourmesh/detour/inject"
	"github.com/detourmesh/detour/internal/cmdline"
)

// TestInjectedContainersSpeakThisBinary: every DETOUR_* variable the injector gives detour-proxy
// is a flag of detour proxy (bindEnv ignores a name no flag has, so a typo would be silent), the
// values parse, and every flag it gives detour-init is one of detour init's.
func TestInjectedContainersSpeakThisBinary(t *testing.T) {
	pod := []byte(`{"metadata":{"annotations":{
		"config.detour.io/default-inbound-policy":"strict","config.detour.io/opaque-ports":"5432",
		"config.detour.io/proxy-log-level":"debug","config.detour.io/skip-inbound-ports":"22",
		"config.detour.io/skip-outbound-ports":"3306","config.detour.io/skip-outbound-cidrs":"198.18.250.0/24"}},
		"spec":{"containers":[{"name":"app","ports":[{"name":"http","containerPort":8080}],
		"readinessProbe":{"httpGet":{"path":"/ready","port":"http"}}}]}}`)
	ops, _, err := inject.Patch(pod, inject.Config{TrustAnchorPEM: "x"})
	if err != nil {
		t.Fatal(err)
	}
	var containers []struct {
		Name string
		Args []string
		Env  []struct{ Name, Value string }
	}
	for _, op := range ops {
		if op.Path == "/spec/initContainers" {
			b, _ := json.Marshal(op.Value)
			json.Unmarshal(b, &containers)
		}
	}
	if len(containers) != 2 {
		t.Fatalf("want detour-init and detour-proxy in the patch: %+v", ops)
	}
	for _, c := range containers {
		var cmd interface{ Flags() *pflag.FlagSet }
		switch {
		case c.Name == inject.InitContainer && c.Args[0] == "init":
			cmd = newInitCommand()
		case c.Name == inject.ProxyContainer && c.Args[0] == "proxy":
			cmd = newProxyCommand()
		default:
			t.Fatalf("container %s runs %v", c.Name, c.Args)
		}
		if c.Name == inject.ProxyContainer && len(c.Env) < 8 {
			t.Fatalf("the proxy's environment has only %d variables: %+v", len(c.Env), c.Env)
		}
		flags := map[string]*pflag.Flag{}
		cmd.Flags().VisitAll(func(f *pflag.Flag) { flags[cmdline.EnvName(f.Name)] = f })
		for _, a := range c.Args[1:] {
			if name, ok := strings.CutPrefix(a, "--"); ok && cmd.Flags().Lookup(name) == nil {
				t.Errorf("%s is given --%s, which detour %s does not have", c.Name, name, c.Args[0])
			}
		}
		for _, e := range c.Env {
			f, ok := flags[e.Name]
			if !ok {
				if e.Value == "" {
					t.Errorf("%s: %s (from the downward API) is not a flag of detour %s", c.Name, e.Name, c.Args[0])
				} else {
					t.Errorf("%s: %s=%q is not a flag of detour %s", c.Name, e.Name, e.Value, c.Args[0])
				}
				continue
			}
			// The kubelet expands $(VAR); stand in for it with a pod's values.
			v := strings.NewReplacer("$(DETOUR_POD_NAMESPACE)", "stocks", "$(DETOUR_POD_SERVICE_ACCOUNT)", "stockdata").Replace(e.Value)
			if v == "" {
				v = "from-the-downward-api"
			}
			if err := f.Value.Set(v); err != nil {
				t.Errorf("%s: %s=%q does not parse as --%s: %v", c.Name, e.Name, v, f.Name, err)
			}
		}
	}
}
