package main

import "github.com/spf13/cobra"

// newCheckCommand runs detour-controller check: the checks need the Kubernetes API (client-go),
// which stays out of this binary.
func newCheckCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "check [flags]",
		Short:              "Check Detour's installation in the cluster (runs detour-controller check)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return execController(append([]string{"check"}, args...))
		},
	}
}
