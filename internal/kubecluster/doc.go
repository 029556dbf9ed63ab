// Package kubecluster starts a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager), and optionally a real one-node cluster, on this machine for
// Detour's tests and for `make cluster`, and removes everything it started afterwards.
//
// It exists because Detour's Kubernetes parts (the controller's informers, TokenReview, the
// injection webhook, the image on a node) must be tested against the real API server and a
// real kubelet, not a fake client, and because these processes are easy to leak: a test that
// fails or a run that crashes must not leave etcd, an API server, mounts, cgroups or network
// namespaces behind. Every cluster lives in a state directory of its own under a root
// (DefaultRoot) holding its certificates, kubeconfig, data, logs and one PID file per process
// (with the process's start time, so a reused PID is never mistaken for ours); Stop ends the
// processes by PID and removes the directory, and Sweep finds what a crashed run left through
// those directories alone, never by process name.
//
// The control plane listens on an address of its own in 127.77.0.0/16 (one per cluster, so
// concurrent test binaries never collide over ports) with fixed ports on it: etcd 2379 and
// 2380, kube-apiserver 6443, kube-controller-manager 10257. The certificates are made by the
// harness for each cluster; the API server verifies ServiceAccount tokens (TokenReview) and
// calls mutating admission webhooks at any URL, loopback included.
//
// A node cluster (Options.Node) adds kube-scheduler, containerd, the kubelet, kube-proxy and
// CNI, and runs the node's networking and the control plane in a network namespace of its
// own (see node.go for why the control plane goes there too); its API server is relayed to
// the cluster's loopback address. Stop and Sweep then also remove containers, mounts,
// cgroups and the namespace.
//
// The binaries come from scripts/k8s-build.sh (the pinned versions, cached outside the
// repository; see BinDir). Only tests and the dev tool import this package: client-go must
// never enter the sidecar's binary, whose memory follows its size.
package kubecluster
