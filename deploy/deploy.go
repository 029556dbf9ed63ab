// Package deploy holds Detour's Kubernetes manifests, a kustomize base (kubectl apply -k deploy/),
// and gives them to `detour install` from the same files, embedded in the binary, so both ways
// install the same objects. The base has no transformations: install prints the files in the
// order kustomization.yaml lists them.
package deploy

import (
	"embed"
	"fmt"
	"path"

	"gopkg.in/yaml.v3"
)

//go:embed kustomization.yaml namespace.yaml serviceaccount.yaml rbac.yaml service.yaml deployment.yaml webhook.yaml
var base embed.FS

// File is one manifest of the base.
type File struct {
	Name string
	Data []byte
}

// Base returns the base's resources in kustomization.yaml's order.
func Base() ([]File, error) {
	k, err := base.ReadFile("kustomization.yaml")
	if err != nil {
		return nil, err
	}
	var kust struct {
		Resources []string `yaml:"resources"`
	}
	if err := yaml.Unmarshal(k, &kust); err != nil {
		return nil, fmt.Errorf("deploy/kustomization.yaml: %w", err)
	}
	var out []File
	for _, r := range kust.Resources {
		b, err := base.ReadFile(path.Clean(r))
		if err != nil {
			return nil, fmt.Errorf("deploy/kustomization.yaml lists %s, which is not embedded: %w", r, err)
		}
		out = append(out, File{Name: r, Data: b})
	}
	return out, nil
}

// Names of the objects install and check refer to.
const (
	Namespace         = "detour"
	ControllerName    = "detour-controller"
	CASecret          = "detour-ca"
	WebhookConfig     = "detour-injector"
	ControllerImage   = "detour.local/detour-controller:dev"
	ProxyImage        = "detour.local/detour:dev"
	CASecretMountPath = "/var/run/detour/ca"
)
