package kubecluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Sweep removes the clusters under root (DefaultRoot if empty) whose owner, the process that
// started them, no longer runs: the leftovers of a crashed test or dev session. Clusters of
// running owners (other test binaries, `make cluster`) are left alone. It ends only
// processes that the state directory names as the cluster's (PID file with a matching start
// time, or the cluster's marker in their environment), then removes what they left. It
// returns the names of the clusters it removed.
func Sweep(root string) ([]string, error) {
	if root == "" {
		root = DefaultRoot
	}
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sweeping clusters in %s: %w", root, err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		if owner, err := readProcID(filepath.Join(dir, "owner")); err == nil && owner.alive() {
			continue
		}
		if err := teardown(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("sweeping clusters in %s: %w", root, err)
	}
	return removed, nil
}

// teardown ends what is left of the cluster in dir and removes the directory. It works from
// the directory alone, so it serves both Stop (after ending the processes it knows) and Sweep
// (after a crash).
func teardown(dir string) error {
	var errs []error
	// Components first, in the reverse order of their start (the PID files' order does not
	// matter for correctness, only for quieter logs).
	pids, _ := filepath.Glob(filepath.Join(dir, "pids", "*"))
	for i := len(pids) - 1; i >= 0; i-- {
		id, err := readProcID(pids[i])
		if err != nil || !id.alive() || !hasMarker(id.pid, dir) {
			continue
		}
		if err := terminate(id, 5*time.Second, nil); err != nil {
			errs = append(errs, err)
		}
	}
	// Then anything else carrying the marker (containerd's shims).
	for _, id := range markedProcs(dir) {
		if err := terminate(id, 2*time.Second, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if err := teardownNode(dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tearing down %s: %w", dir, err)
	}
	return nil
}

// teardownNode removes a node's mounts, cgroups and network namespaces (none for an API-only
// cluster).
func teardownNode(dir string) error { return nil }
