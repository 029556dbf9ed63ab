// Package cmdline holds the conventions every Detour command shares, so that the two binaries
// (detour, the sidecar's, and detour-controller, which carries client-go) behave alike: flags
// that also read DETOUR_<FLAG_NAME>, the -o text|json switch, and the log of a long-running
// command.
package cmdline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// BindEnv lets every flag of cmd that was not set on the command line take its value from
// DETOUR_<FLAG_NAME> (dashes become underscores), so a pod spec can configure by environment.
func BindEnv(cmd *cobra.Command) error {
	var errs []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := EnvName(f.Name)
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

// EnvName is the environment variable that sets flag: DETOUR_ and the flag's name in upper case
// with underscores.
func EnvName(flag string) string {
	return "DETOUR_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// OutputFormat validates the -o flag shared by every command.
func OutputFormat(s string) error {
	if s != "text" && s != "json" {
		return fmt.Errorf("-o %q: want text or json", s)
	}
	return nil
}

// ServiceLogger is the log of a long-running command (proxy, controller): -o text or json, at
// --log-level, on stderr.
func ServiceLogger(output, levelText string) (*slog.Logger, error) {
	if err := OutputFormat(output); err != nil {
		return nil, err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(levelText)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", levelText)
	}
	opts := &slog.HandlerOptions{Level: level}
	if output == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
}

// ExitError carries an exit code for a failure that has already been reported to the user.
type ExitError struct{ Code int }

func (e ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Main runs cmd until SIGINT or SIGTERM and exits as the binaries do: with an ExitError's code,
// or 1 after printing any other error as "name: error".
func Main(name string, cmd *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.Code)
		}
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}
