package pods

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/detourmesh/detour/init/plan"
)

// Flags are the settings of a running proxy that `detour debug` needs, read back from its
// command line and environment the way `detour proxy` reads them: a flag on the command line
// wins over DETOUR_<FLAG_NAME>, which wins over the default.
type Flags struct {
	OutboundPort  uint16 `json:"outbound_port"`
	InboundPort   uint16 `json:"inbound_port"`
	AdminPort     uint16 `json:"admin_port"`
	Discovery     string `json:"discovery,omitempty"` // file:PATH or controller:HOST:PORT
	Identity      string `json:"identity,omitempty"`
	TrustAnchor   string `json:"trust_anchor,omitempty"` // a path in the proxy's own mount namespace
	IdentityToken string `json:"identity_token,omitempty"`
	PodName       string `json:"pod_name,omitempty"`
	PodNamespace  string `json:"pod_namespace,omitempty"`
}

// flagNames are the flags of `detour proxy` that take a value, with where each one goes.
// The proxy has no boolean flags; --help is not a running proxy.
var flagNames = map[string]func(*Flags, string) error{
	"outbound-port":  func(f *Flags, v string) error { return setPort(&f.OutboundPort, v) },
	"inbound-port":   func(f *Flags, v string) error { return setPort(&f.InboundPort, v) },
	"admin-port":     func(f *Flags, v string) error { return setPort(&f.AdminPort, v) },
	"discovery":      func(f *Flags, v string) error { f.Discovery = v; return nil },
	"identity":       func(f *Flags, v string) error { f.Identity = v; return nil },
	"trust-anchor":   func(f *Flags, v string) error { f.TrustAnchor = v; return nil },
	"identity-token": func(f *Flags, v string) error { f.IdentityToken = v; return nil },
	"pod-name":       func(f *Flags, v string) error { f.PodName = v; return nil },
	"pod-namespace":  func(f *Flags, v string) error { f.PodNamespace = v; return nil },
}

func setPort(p *uint16, v string) error {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("port %q: want 1 to 65535", v)
	}
	*p = uint16(n)
	return nil
}

// IsProxyCommand reports whether argv runs `detour proxy`: the root command has no flags of
// its own, so the subcommand is always the first argument.
func IsProxyCommand(argv []string) bool {
	return len(argv) >= 2 && argv[1] == "proxy"
}

// ParseFlags reads the settings of a `detour proxy` process from its argv (argv[0] the program,
// argv[1] "proxy") and environment ("KEY=VALUE" entries), as pflag and `detour proxy` would:
// --name=value and --name value; a flag given twice keeps its last value; everything after
// "--" is not a flag. Flags it does not need are skipped, assumed to take a value unless given
// with "=". A bad value of a flag it needs is an error naming the flag.
func ParseFlags(argv, env []string) (Flags, error) {
	f := Flags{OutboundPort: plan.DefaultOutboundPort, InboundPort: plan.DefaultInboundPort, AdminPort: plan.DefaultAdminPort}
	set := map[string]bool{}
	var args []string
	if len(argv) > 2 {
		args = argv[2:]
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue // positional: the proxy takes none
		}
		name := strings.TrimLeft(a, "-")
		value, inline := "", false
		if n, v, ok := strings.Cut(name, "="); ok {
			name, value, inline = n, v, true
		}
		if strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && len(name) > 1 && !inline {
			// -oVALUE: a shorthand with its value attached. Only -o exists, which we skip.
			continue
		}
		if !inline {
			if i+1 >= len(args) {
				break // a flag without its value: pflag refuses to start
			}
			i++
			value = args[i]
		}
		apply, known := flagNames[name]
		if !known {
			continue
		}
		if err := apply(&f, value); err != nil {
			return Flags{}, fmt.Errorf("--%s: %w", name, err)
		}
		set[name] = true
	}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		name, ok := strings.CutPrefix(k, "DETOUR_")
		if !ok {
			continue
		}
		name = strings.ToLower(strings.ReplaceAll(name, "_", "-"))
		apply, known := flagNames[name]
		if !known || set[name] {
			continue
		}
		if err := apply(&f, v); err != nil {
			return Flags{}, fmt.Errorf("%s: %w", k, err)
		}
	}
	return f, nil
}

// IdentityNamespace returns the namespace of a SPIFFE ID spiffe://<td>/ns/<ns>/sa/<sa>, and
// the service account, or "" when id has another shape.
func IdentityNamespace(id string) (namespace, account string) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", ""
	}
	_, path, ok := strings.Cut(rest, "/")
	if !ok {
		return "", ""
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return "", ""
	}
	return parts[1], parts[3]
}
