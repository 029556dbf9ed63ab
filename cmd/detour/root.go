package main

import (
	"github.com/spf13/cobra"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "detour",
		Short:         "Detour: a service-mesh data plane that balances every request, not every connection",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newInitCommand(), newProxyCommand(), newDemoCommand(), newControllerCommand(), newWaitReadyCommand(), newInjectCommand(), newUninjectCommand(), newInstallCommand(), newCheckCommand(), newDebugCommand(),
		newStatCommand(), newTopCommand(), newDashboardCommand())
	return root
}
