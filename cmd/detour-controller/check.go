package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/detourmesh/detour/controller/check"
	"github.com/detourmesh/detour/internal/cmdline"
)

func newCheckCommand() *cobra.Command {
	var kubeconfig, output string
	var o check.Options
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check Detour's installation in the cluster: API, trust anchor, webhook, controller, injection",
		Long: `check asks the cluster whether Detour's control plane is installed and working: the API server
answers; the trust anchor and issuer in Secret detour/detour-ca are valid and not about to expire;
the MutatingWebhookConfiguration detour-injector has both webhooks with the trust anchor as their
caBundle; the controller is ready; and a dry-run pod annotated detour.io/inject: enabled comes
back with detour-proxy (nothing is created). Each check prints ok or failed with a hint; the exit
status is 1 when any failed. detour check runs this.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			if err := cmdline.OutputFormat(output); err != nil {
				return err
			}
			client, err := kubeClient(kubeconfig)
			if err != nil {
				return err
			}
			results := check.Run(cmd.Context(), client, o)
			if err := printChecks(cmd.OutOrStdout(), output, results); err != nil {
				return err
			}
			for _, r := range results {
				if !r.OK {
					return cmdline.ExitError{Code: 1}
				}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file; empty: $KUBECONFIG or ~/.kube/config (or the pod's own configuration)")
	fl.StringVar(&o.Namespace, "namespace", "detour", "the control plane's namespace")
	fl.StringVar(&o.ProbeNamespace, "probe-namespace", "default", "where the injection check makes its dry-run pod")
	fl.DurationVar(&o.ExpiryWarning, "expiry-warning", 30*24*time.Hour, "fail when the trust anchor or issuer expires sooner than this")
	fl.StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func printChecks(w io.Writer, output string, results []check.Result) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRESULT\tDETAIL")
	for _, r := range results {
		res := "ok"
		if !r.OK {
			res = "failed"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, res, r.Detail)
		if r.Hint != "" {
			fmt.Fprintf(tw, "\t\thint: %s\n", r.Hint)
		}
	}
	return tw.Flush()
}
