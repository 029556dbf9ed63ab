package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// controllerBinary is the name of the controller's binary, which holds everything that needs
// client-go (the controller, its CA tools and the cluster checks).
const controllerBinary = "detour-controller"

// newControllerCommand runs detour-controller with the same arguments: the controller and its
// tools live in a binary of their own so that client-go stays out of the sidecar's.
func newControllerCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "controller",
		Short:              "Run the controller (detour-controller, found beside detour or on PATH) with these arguments",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return execController(args)
		},
	}
}

// execController replaces this process with detour-controller args..., so signals and the exit
// status are the controller's own.
func execController(args []string) error {
	path, err := findController()
	if err != nil {
		return err
	}
	return syscall.Exec(path, append([]string{path}, args...), os.Environ())
}

// findController looks for detour-controller beside this executable first (bin/ of make build,
// one image), then on PATH.
func findController() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), controllerBinary)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(controllerBinary)
	if err == nil {
		return p, nil
	}
	if errors.Is(err, exec.ErrNotFound) {
		return "", fmt.Errorf("%s not found beside detour or on PATH: it holds the controller and the cluster checks; build it with make build (bin/%s)", controllerBinary, controllerBinary)
	}
	return "", fmt.Errorf("looking for %s: %w", controllerBinary, err)
}
