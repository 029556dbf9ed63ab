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
