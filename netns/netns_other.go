//go:build !linux

package netns

import (
	"net/netip"
	"os/exec"
)

// Create is only implemented on Linux.
func Create(name string) (*NS, error) { return nil, ErrUnsupported }

// Open is only implemented on Linux.
func Open(name string) (*NS, error) { return nil, ErrUnsupported }

// OpenPath is only implemented on Linux.
func OpenPath(path string) (*NS, error) { return nil, ErrUnsupported }

// Delete is only implemented on Linux.
func (n *NS) Delete() error { return ErrUnsupported }

// Do is only implemented on Linux.
func (n *NS) Do(fn func() error) error { return ErrUnsupported }

// Start is only implemented on Linux.
func (n *NS) Start(cmd *exec.Cmd) error { return ErrUnsupported }

// Run is only implemented on Linux.
func (n *NS) Run(cmd *exec.Cmd) error { return ErrUnsupported }

// Sweep is only implemented on Linux.
func Sweep(prefix string) ([]string, error) { return nil, ErrUnsupported }

// AsUID does nothing outside Linux; starting the command fails anyway.
func AsUID(cmd *exec.Cmd, uid, gid uint32) {}

// NewTopology is only implemented on Linux.
func NewTopology(prefix string) (*Topology, error) { return nil, ErrUnsupported }

// AddPod is only implemented on Linux.
func (t *Topology) AddPod(name string) (*Pod, error) { return nil, ErrUnsupported }

// AddService is only implemented on Linux.
func (t *Topology) AddService(vip netip.AddrPort, backends []netip.AddrPort) error {
	return ErrUnsupported
}

// Close is only implemented on Linux.
func (t *Topology) Close() error { return ErrUnsupported }

// SetServiceBackends is only implemented on Linux.
func (t *Topology) SetServiceBackends(vip netip.AddrPort, backends []netip.AddrPort) error {
	return ErrUnsupported
}

// RemovePod is only implemented on Linux.
func (t *Topology) RemovePod(pod *Pod) error { return ErrUnsupported }
