// Command detour is the binary of the Detour sidecar and the tools around it: init, proxy,
// inject, install and demo are its subcommands. It never links client-go or the Kubernetes API
// types (a proxy's RSS follows its binary's size): what needs the cluster's API lives in
// detour-controller, which `detour controller` and `detour check` run. This package holds flags
// and wiring only.
package main

import (
	"log/slog"
	"os"

	"github.com/detourmesh/detour/internal/cmdline"
)

func main() { cmdline.Main("detour", newRootCommand()) }

func newLogger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
