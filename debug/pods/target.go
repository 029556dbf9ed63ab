package pods

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/detourmesh/detour/netns"
)

// Target is what a POD argument names: a network namespace, held open until Close so that it
// stays the same namespace while a command looks at it (a PID can be reused, a name can be
// bound anew), and the proxies found serving it: usually one, none when the proxy is not
// running, more than one when something is wrong.
type Target struct {
	Arg     string
	NS      *netns.NS
	NetNS   NetNS
	Proxies []Pod
	fd      int
}

// Close releases the namespace.
func (t *Target) Close() {
	if t.fd >= 0 {
		unix.Close(t.fd)
		t.fd = -1
	}
}

// Proxy returns the pod's proxy, if exactly one was found.
func (t *Target) Proxy() (Pod, bool) {
	if len(t.Proxies) == 1 {
		return t.Proxies[0], true
	}
	return Pod{}, false
}

// Label names the target in messages.
func (t *Target) Label() string {
	if p, ok := t.Proxy(); ok {
		return "pod " + p.Label()
	}
	return fmt.Sprintf("%q (network namespace %s)", t.Arg, t.NetNS)
}
