//go:build !linux

package pods

import "errors"

var errUnsupported = errors.New("detour debug reads /proc and enters network namespaces: it needs Linux")

// Find is only implemented on Linux.
func (f Finder) Find() ([]Pod, error) { return nil, errUnsupported }

// Resolve is only implemented on Linux.
func (f Finder) Resolve(arg string, found []Pod) (*Target, error) { return nil, errUnsupported }
