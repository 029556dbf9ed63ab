package netns

import (
	"errors"
	"net/netip"
	"path/filepath"
)

// runDir is where named namespaces are bind-mounted, as in iproute2.
const runDir = "/run/netns"

// ErrUnsupported is returned on systems without Linux network namespaces.
var ErrUnsupported = errors.New("netns: network namespaces need Linux")

// NS is a named network namespace, as `ip netns` knows it (/run/netns/NAME), or one opened by
// its path (OpenPath).
type NS struct {
	Name string
	path string // set by OpenPath
}

// Path returns the namespace's path: the bind mount /run/netns/NAME, or what OpenPath was given.
func (n *NS) Path() string {
	if n.path != "" {
		return n.path
	}
	return filepath.Join(runDir, n.Name)
}

func (n *NS) String() string { return n.Name }

// Topology is a test "cluster node": namespace Node holds bridge dt0
// (198.18.0.1/16, fd00:de70::1/64) and each Pod is a namespace joined to it
// by a veth. See shared/DESIGN.md "Test topology".
type Topology struct {
	// Prefix starts the name of every namespace of the topology.
	Prefix string
	Node   *NS
	Pods   []*Pod

	next int // index of the next pod; 198.18.0.<next>
}

// Pod is one pod namespace of a Topology.
type Pod struct {
	Name string // as given to AddPod; the namespace is Prefix+Name
	NS   *NS
	IPv4 netip.Addr // 198.18.0.N
	IPv6 netip.Addr // fd00:de70::N
}
