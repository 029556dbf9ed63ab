// Package pods finds a node's meshed workloads from /proc alone: every running `detour proxy`
// (matched by its executable's Go build information and its arguments, not by a process name
// anything can take), the network namespace it serves, and the pod it says it serves. It
// exists so that `detour debug` needs no cluster API: it works the same for pods a kubelet
// runs, for the demo's, and for a namespace made by hand.
//
// A proxy names its pod through --pod-name and --pod-namespace, or DETOUR_POD_NAME and
// DETOUR_POD_NAMESPACE in its environment (what the Kubernetes injector sets from the downward
// API); without them the namespace comes from its SPIFFE identity
// (spiffe://<trust-domain>/ns/<namespace>/sa/<account>).
package pods
