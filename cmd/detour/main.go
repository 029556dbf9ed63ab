// Command detour is the one binary of the Detour service mesh: init, proxy, demo and the tools
// around them are its subcommands. This package holds flags and wiring only.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "detour:", err)
		os.Exit(1)
	}
}

// exitError carries an exit code for a failure that has already been reported to the user.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newLogger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// serviceLogger is the log of a long-running command (proxy, controller): -o text or json,
// at --log-level.
func serviceLogger(output, levelText string) (*slog.Logger, error) {
	if err := outputFormat(output); err != nil {
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
