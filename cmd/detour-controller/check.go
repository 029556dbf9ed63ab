package main

import "github.com/spf13/cobra"

// newCheckCommand is filled in by the cluster checks.
func newCheckCommand() *cobra.Command {
	return &cobra.Command{Use: "check", Short: "Check Detour's installation in the cluster", Hidden: true}
}
