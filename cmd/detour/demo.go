package main

import (
	"os/signal"
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
with forwarders from the host's loopback; Ctrl-C removes everything it made.`,
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
	return cmd
}
