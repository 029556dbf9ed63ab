// Command detour-controller is Detour's control plane: discovery (from a file or from the
// Kubernetes API), the CA that issues workload certificates, the injection webhook, and the
// checks of an installation. It is a binary of its own because it links client-go and the
// Kubernetes API types, which must stay out of the sidecar's binary (cmd/detour). This package
// holds flags and wiring only.
package main

import (
	"github.com/detourmesh/detour/internal/cmdline"
)

func main() { cmdline.Main("detour-controller", newControllerCommand()) }
