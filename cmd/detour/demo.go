package main

import (
	"github.com/spf13/cobra"

	"github.com/detourmesh/detour/demo"
)

func newDemoCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run Detour on a node made of network namespaces, no cluster needed (needs root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo.Run(cmd.Context(), demo.Options{Out: cmd.OutOrStdout()})
		},
	}
}
