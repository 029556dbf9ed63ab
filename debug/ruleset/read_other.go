//go:build !linux

package ruleset

import (
	"errors"

	"github.com/detourmesh/detour/netns"
)

// Read is only implemented on Linux.
func Read(*netns.NS) (Snapshot, error) {
	return Snapshot{}, errors.New("reading iptables rules needs Linux")
}

// RecordedPod is only implemented on Linux.
func RecordedPod(*netns.NS) (namespace, name string, ok bool) { return "", "", false }
