package pods

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Pod is one running proxy and what it serves.
type Pod struct {
	PID int `json:"pid"`
	// Name and Namespace are the pod's, when the proxy was told them; Namespace falls back to
	// the identity's.
	Name      string    `json:"name,omitempty"`
	Namespace string    `json:"namespace,omitempty"`
	Identity  string    `json:"identity,omitempty"`
	NetNS     NetNS     `json:"netns"`
	Started   time.Time `json:"started"`
	UID       int       `json:"uid"`
	Exe       string    `json:"exe"` // as the proxy's own mount namespace names it
	Flags     Flags     `json:"flags"`
}

// NetNS is a network namespace, known by its inode, and the `ip netns` names bound to it.
type NetNS struct {
	Inode uint64   `json:"inode"`
	Names []string `json:"names,omitempty"`
	dev   uint64
}

// String names the namespace as a user would: its first name, else its inode.
func (n NetNS) String() string {
	if len(n.Names) > 0 {
		return n.Names[0]
	}
	return fmt.Sprintf("net:[%d]", n.Inode)
}

// Ref is how the pod is written on a command line: namespace/name, or its PID when it has no
// name.
func (p Pod) Ref() string {
	switch {
	case p.Name != "" && p.Namespace != "":
		return p.Namespace + "/" + p.Name
	case p.Name != "":
		return p.Name
	}
	return strconv.Itoa(p.PID)
}

// Label names the pod in messages: "stocks/stockweb (PID 12, network namespace dt-demo-stockweb)".
func (p Pod) Label() string {
	if p.Name == "" {
		return fmt.Sprintf("the proxy PID %d (network namespace %s)", p.PID, p.NetNS)
	}
	return fmt.Sprintf("%s (PID %d, network namespace %s)", p.Ref(), p.PID, p.NetNS)
}

// sortPods orders pods by namespace, name, then PID, so lists read the same every time.
func sortPods(ps []Pod) {
	slices.SortFunc(ps, func(a, b Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.PID, b.PID))
	})
}

// Summary lists pods for an error message: "stocks/stockweb (PID 12, ...), ...", or says
// there are none.
func Summary(ps []Pod) string {
	if len(ps) == 0 {
		return "no detour proxy runs on this node"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Label()
	}
	return "found " + strings.Join(s, "; ")
}
