// Command pause is the sandbox ("pause") container of the test cluster's pods: it holds the
// pod's namespaces open, reaps the zombies of a shared PID namespace, and exits on SIGINT or
// SIGTERM. The test cluster has no registry to pull registry.k8s.io/pause from, so it builds
// its own (a static binary in an image of nothing else, pinned as containerd's sandbox image).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		// As PID 1 of a shared PID namespace, orphans are re-parented here.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
