package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "detour",
		Short:         "Detour: a service-mesh data plane that balances every request, not every connection",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newInitCommand(), newProxyCommand(), newDemoCommand(), newControllerCommand(), newDebugCommand())
	return root
}

// bindEnv lets every flag of cmd that was not set on the command line take its value from
// DETOUR_<FLAG_NAME> (dashes become underscores), so a pod spec can configure by environment.
func bindEnv(cmd *cobra.Command) error {
	var errs []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if err := cmd.Flags().Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q: %v", name, v, err))
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("invalid environment: %s", strings.Join(errs, "; "))
	}
	return nil
}

func envName(flag string) string {
	return "DETOUR_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// outputFormat validates the -o flag shared by every command.
func outputFormat(s string) error {
	if s != "text" && s != "json" {
		return fmt.Errorf("-o %q: want text or json", s)
	}
	return nil
}
