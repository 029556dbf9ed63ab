package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/detourmesh/detour/debug/commands"
	"github.com/detourmesh/detour/debug/pods"
	"github.com/detourmesh/detour/internal/cmdline"
)

func newDebugCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "debug",
		Short: "Debug the meshed pods of this node from the node alone: pods, rules, check, conns, endpoints, tap (needs root)",
		Long: `debug finds the node's meshed pods from /proc (the running detour proxy processes) and reads each
pod's rules and its proxy's admin port from inside the pod's network namespace: it needs no cluster
API and nothing exposed on the node. POD is ` + pods.Usage + `.
Every command prints a table, or JSON with -o json.`,
		Args: cobra.NoArgs,
	}
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	env := func(c *cobra.Command) (commands.Env, error) {
		if err := cmdline.OutputFormat(output); err != nil {
			return commands.Env{}, err
		}
		if os.Geteuid() != 0 {
			return commands.Env{}, errors.New("detour debug reads other processes' /proc entries and enters pods' network namespaces: run it as root")
		}
		return commands.Env{Out: c.OutOrStdout(), Err: c.ErrOrStderr(), JSON: output == "json"}, nil
	}
	// failed turns a report that found failures into exit status 1; it was printed already.
	failed := func(err error) error {
		if errors.Is(err, commands.ErrFailed) {
			return cmdline.ExitError{Code: 1}
		}
		return err
	}
	pod := func(use, short, long string, run func(c *cobra.Command, e commands.Env, args []string) error) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Long: long,
			Args: cobra.RangeArgs(1, 2),
			RunE: func(c *cobra.Command, args []string) error {
				e, err := env(c)
				if err != nil {
					return err
				}
				return failed(run(c, e, args))
			},
		}
	}

	podsCmd := &cobra.Command{
		Use:   "pods",
		Short: "List the node's meshed pods: namespace and name, PID, network namespace, ready, uptime, certificate expiry, identity",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			e, err := env(c)
			if err != nil {
				return err
			}
			return commands.Pods(c.Context(), e)
		},
	}

	rules := pod("rules POD", "Show Detour's chains in both iptables backends and how they differ from what init would install",
		`rules shows the nat chains Detour uses in both backends of the pod's network namespace, each rule
marked as Detour's or foreign, and compares them with the plan of the flags init was run with (init
records them in the rules themselves, as detour/config comments): missing rules, foreign rules
ahead of Detour's jumps (with what they do to TCP), rules in the other backend. It exits 1 when the
rules differ from the plan, as diff does.`,
		func(c *cobra.Command, e commands.Env, args []string) error {
			if len(args) > 1 {
				return fmt.Errorf("rules takes one POD, got %q", args)
			}
			return commands.Rules(c.Context(), e, args[0])
		})

	check := pod("check POD", "Check everything the pod's traffic depends on, one line each: ok, failed or skipped with a hint; exit 1 on any failure",
		`check runs a checklist against the pod: the proxy process, its admin port and readiness, its
listeners, the rules (backend, plan, foreign rules), the redirect proven right now with real
connections against the live proxy (outbound, inbound to the pod's own address, the proxy's UID and
the admin port exempt), discovery, the controller's reachability, the trust anchor and the
certificate. It changes nothing; its probe connections show in the proxy's metrics and
/debug/connections. It exits 1 when any check failed.`,
		func(c *cobra.Command, e commands.Env, args []string) error {
			if len(args) > 1 {
				return fmt.Errorf("check takes one POD, got %q", args)
			}
			return commands.Check(c.Context(), e, args[0])
		})

	var closed bool
	conns := pod("conns POD", "List the connections the pod's proxy holds: client, original destination, protocol, TLS peer, age, bytes, endpoints",
		`conns lists the client connections of the pod's proxy: direction, client, original destination,
detected protocol, the TLS peer's identity (or the service), age, bytes received and sent (the
kernel's counts), and for HTTP/2 the endpoints its streams went to. --closed adds the last 64 that
ended.`,
		func(c *cobra.Command, e commands.Env, args []string) error {
			if len(args) > 1 {
				return fmt.Errorf("conns takes one POD, got %q", args)
			}
			return commands.Conns(c.Context(), e, args[0], closed)
		})
	conns.Flags().BoolVar(&closed, "closed", false, "also list the last connections that ended")

	var all bool
	endpoints := pod("endpoints POD [SERVICE]", "Show the balancer's view: each service's endpoints, in-flight requests, EWMA latency, weight, zone, identity",
		`endpoints shows what the pod's proxy routes by: each service (or only SERVICE, a name or address),
its endpoints with their in-flight requests, peak-EWMA latency estimate (p2c-ewma), weight, zone and
identity, and any further state the proxy reports about them. A proxy on the controller follows the
endpoints of the services its pod uses; --all lists the rest of its table too.`,
		func(c *cobra.Command, e commands.Env, args []string) error {
			svc := ""
			if len(args) > 1 {
				svc = args[1]
			}
			return commands.Endpoints(c.Context(), e, args[0], svc, all)
		})
	endpoints.Flags().BoolVar(&all, "all", false, "also list the services whose endpoints the proxy does not follow")

	var to commands.TapOptions
	tap := pod("tap POD", "Stream the requests the pod's proxy serves: time, direction, method or gRPC method, status, latency, endpoint, TLS peer",
		`tap streams every HTTP/2, gRPC and HTTP/1 request the pod's proxy serves, in both directions, as
it ends, from the admin port's /debug/tap. A tap that reads too slowly loses requests (and says how
many) rather than slowing the proxy. It stops after --limit requests, after --duration, or on Ctrl-C.`,
		func(c *cobra.Command, e commands.Env, args []string) error {
			if len(args) > 1 {
				return fmt.Errorf("tap takes one POD, got %q", args)
			}
			if to.Limit < 0 || to.Duration < 0 {
				return errors.New("--limit and --duration must not be negative")
			}
			return commands.Tap(c.Context(), e, args[0], to)
		})
	tap.Flags().StringVar(&to.Service, "service", "", "only requests for this service: its name, authority or address")
	tap.Flags().IntVar(&to.Limit, "limit", 0, "stop after this many requests (0: no limit)")
	tap.Flags().DurationVar(&to.Duration, "duration", 0, "stop after this long, e.g. 30s (0: until Ctrl-C)")

	cmd.AddCommand(podsCmd, rules, check, conns, endpoints, tap)
	return cmd
}
