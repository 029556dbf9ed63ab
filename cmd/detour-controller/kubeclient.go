package main

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kubeConfig is the REST configuration for --kubeconfig: the file when given, else the pod's
// in-cluster configuration, else $KUBECONFIG or ~/.kube/config (kubectl's rules).
func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		if cfg, err := rest.InClusterConfig(); err == nil {
			return cfg, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes configuration: %w (not in a pod: give --kubeconfig)", err)
	}
	return cfg, nil
}

func kubeClient(path string) (kubernetes.Interface, error) {
	cfg, err := kubeConfig(path)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "detour-controller"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}
