package main

import (
	"fmt"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/detourmesh/detour/demo"
	"github.com/detourmesh/detour/internal/cmdline"
)

func newDemoCommand() *cobra.Command {
	var o demo.Options
	var output string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the StockKube mesh on a node made of network namespaces, no cluster needed (needs root)",
		Long: `demo builds a node from network namespaces: a StockWeb pod, StockData replicas behind a
service VIP implemented the way kube-proxy does it, and shows StockWeb's 100 concurrent gRPC
calls over one connection, first without the mesh (one replica serves them all) and then with
Detour's init and proxy in every pod (every replica serves its share). It then keeps running
with forwarders from the host's loopback, the controller's dashboard among them (where detour stat,
top and dashboard look), and takes detour demo scale and fault on its control socket; Ctrl-C
removes everything it made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.OutputFormat(output); err != nil {
				return err
			}
			o.Out, o.JSON = cmd.OutOrStdout(), output == "json"
			// A closed stdout (demo | head) must not kill the demo before it cleans up.
			signal.Ignore(syscall.SIGPIPE)
			return demo.Run(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.Replicas, "replicas", 2, "StockData replicas")
	fl.BoolVar(&o.NoMesh, "no-mesh", false, "show the cluster without Detour only")
	fl.DurationVar(&o.Duration, "duration", 0, "keep running this long, then clean up (0: until Ctrl-C)")
	fl.Uint16Var(&o.Port, "port", 8000, "first port on 127.0.0.1 for the forwarders (StockWeb, then each proxy's metrics)")
	fl.StringVar(&o.Balancer, "balancer", "round-robin", "StockData's balancer: round-robin (an even table every load) or p2c-ewma (the proxy's default: favours the replicas answering fastest)")
	fl.StringVarP(&output, "output", "o", "text", "output format: text or json (one object per step)")
	fl.DurationVar(&o.CertTTL, "cert-ttl", 0, "lifetime of the workload certificates (controller --cert-ttl; 0: its default, 24h), e.g. 1m to watch renewals")
	fl.StringVar(&o.Bin, "bin", "", "folder with the detour, stockdata and stockweb binaries (default: detour's own)")
	fl.Uint16Var(&o.DashboardPort, "dashboard-port", 7080, "port on 127.0.0.1 the controller's dashboard is forwarded to (where detour stat looks)")
	fl.DurationVar(&o.ReportInterval, "report-interval", 0, "how often each proxy reports to the controller (proxy --report-interval; 0: its default, 10s)")
	fl.StringVar(&o.Control, "control", demo.ControlSocket, "unix socket detour demo scale and fault talk to")
	cmd.AddCommand(newDemoScaleCommand(), newDemoFaultCommand())
	return cmd
}

// printControl prints a running demo's answer, as text or {"message": ...}.
func printControl(cmd *cobra.Command, output, msg string) {
	if output == "json" {
		writeJSON(cmd.OutOrStdout(), map[string]string{"message": msg})
		return
	}
	fmt.Fprintln(cmd.OutOrStdout(), msg)
}

func newDemoScaleCommand() *cobra.Command {
	var socket, output string
	cmd := &cobra.Command{
		Use:   "scale stockdata=N",
		Short: "Scale the running demo's StockData to N replicas (each new one meshed), and watch the split change",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, n, ok := strings.Cut(args[0], "=")
			if !ok || svc != "stockdata" {
				return fmt.Errorf("%q: want stockdata=N", args[0])
			}
			if err := cmdline.OutputFormat(output); err != nil {
				return err
			}
			msg, err := demo.Control(cmd.Context(), socket, "/scale", map[string]string{"stockdata": n})
			if err == nil {
				printControl(cmd, output, msg)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&socket, "control", demo.ControlSocket, "the demo's control socket (demo --control)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func newDemoFaultCommand() *cobra.Command {
	var socket, output string
	var fail float64
	cmd := &cobra.Command{
		Use:   "fault POD --fail FRACTION",
		Short: "Make one StockData replica of the running demo answer a fraction of its calls UNAVAILABLE (0 heals it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if fail < 0 || fail > 1 {
				return fmt.Errorf("--fail %v: want a fraction from 0 to 1", fail)
			}
			if err := cmdline.OutputFormat(output); err != nil {
				return err
			}
			msg, err := demo.Control(cmd.Context(), socket, "/fault", map[string]string{"pod": args[0], "fail": strconv.FormatFloat(fail, 'f', -1, 64)})
			if err == nil {
				printControl(cmd, output, msg)
			}
			return err
		},
	}
	cmd.Flags().Float64Var(&fail, "fail", 0.5, "fraction of calls answered UNAVAILABLE, 0 to 1")
	cmd.Flags().StringVar(&socket, "control", demo.ControlSocket, "the demo's control socket (demo --control)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
