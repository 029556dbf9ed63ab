// Package netns runs code and commands inside named Linux network
// namespaces and builds the small "node + pods" topologies that Detour's
// integration tests, benchmarks and demo run on.
//
// It exists so that nothing Detour tests ever touches the host's own
// network: every link, address, route and iptables rule lives in a
// throw-away namespace (named "dt-…", addresses in 198.18.0.0/15 and
// fd00:de70::/32), and entering a namespace is done in one place that gets
// the OS-thread rules right. setns(2) switches only the calling thread, so
// a goroutine that is not locked to its thread, or a thread handed back to
// the Go scheduler while still inside a namespace, silently runs other
// goroutines' syscalls in the wrong network.
//
// Namespaces are named the way iproute2 names them (a bind mount at
// /run/netns/NAME), so `ip netns exec NAME …` works on everything built here.
package netns
