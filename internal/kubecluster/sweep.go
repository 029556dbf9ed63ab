package kubecluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detourmesh/detour/netns"
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
	// Components first. Whatever is left of a cluster here (its owner crashed, or Stop
	// could not end it) gets no graceful shutdown worth waiting for: half a second, then
	// SIGKILL.
	pids, _ := filepath.Glob(filepath.Join(dir, "pids", "*"))
	for i := len(pids) - 1; i >= 0; i-- {
		id, err := readProcID(pids[i])
		if err != nil || !id.alive() || !hasMarker(id.pid, dir) {
			continue
		}
		if err := terminate(id, 500*time.Millisecond, nil); err != nil {
			errs = append(errs, err)
		}
	}
	// Then anything else carrying the marker (containerd's shims), and the sockets the shims
	// made in containerd's fixed /run/containerd/s.
	var sockets []string
	for _, id := range markedProcs(dir) {
		sockets = append(sockets, shimSocket(id.pid)...)
		if err := terminate(id, 2*time.Second, nil); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range sockets {
		os.Remove(s)
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

// teardownNode removes what a node cluster leaves outside its processes: the containers
// (ended through their cgroups, as they are no process's children of ours), the mounts under
// the state directory (container root file systems, pod volumes, pod network namespaces),
// the cgroups, the node's network namespace (its bridge, veths and kube-proxy's rules go with
// it), and the kubelet's log symlinks into the state directory. An API-only cluster has none
// of these, and each step finds nothing.
func teardownNode(dir string) error {
	name := filepath.Base(dir)
	var errs []error
	cgroups, err := cgroupMounts()
	if err != nil {
		errs = append(errs, err)
	}
	tree := cgroupTree(cgroups, name)
	if err := killCgroupProcs(tree); err != nil {
		errs = append(errs, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "netns")); err == nil {
		ns := strings.TrimSpace(string(b))
		if _, err := netns.Sweep(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	for i := len(tree) - 1; i >= 0; i-- {
		cg := tree[i]
		// A cgroup empties a moment after its last process is reaped.
		var err error
		waitUntil(5*time.Second, func() bool {
			err = unix.Rmdir(cg)
			return err == nil || errors.Is(err, unix.ENOENT)
		})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", cg, err))
		}
	}
	removeHostLeftovers(dir)
	return errors.Join(errs...)
}

// shimSocket returns the socket a containerd shim (identified by its command line) serves
// on: containerd names it /run/containerd/s/<sha256 of address/namespace/id>, whatever its
// state directory, and a killed shim leaves it behind.
func shimSocket(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	flag := map[string]string{}
	for i := 0; i+1 < len(args); i++ {
		if strings.HasPrefix(args[i], "-") {
			flag[strings.TrimLeft(args[i], "-")] = args[i+1]
		}
	}
	if flag["id"] == "" || flag["namespace"] == "" || flag["address"] == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(filepath.Join(flag["address"], flag["namespace"], flag["id"])))
	return []string{filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:]))}
}

// removeHostLeftovers removes what the kubelet and CNI keep at fixed host paths for the
// cluster in dir, and those directories when nothing else is left in them.
func removeHostLeftovers(dir string) {
	name := filepath.Base(dir)
	// The kubelet links each container's log into /var/log/containers.
	if links, err := os.ReadDir("/var/log/containers"); err == nil {
		for _, l := range links {
			p := filepath.Join("/var/log/containers", l.Name())
			if t, err := os.Readlink(p); err == nil && strings.HasPrefix(t, dir+"/") {
				os.Remove(p)
			}
		}
	}
	// libcni caches each attachment's result in /var/lib/cni/results: "<network>-<id>-eth0"
	// for the cluster's network, and "cni-loopback-<id>-lo" for the same sandboxes.
	const results = "/var/lib/cni/results"
	prefix := "detour-" + name + "-"
	if files, err := os.ReadDir(results); err == nil {
		for _, f := range files {
			id, ok := strings.CutPrefix(f.Name(), prefix)
			if !ok {
				continue
			}
			id = strings.TrimSuffix(id, "-eth0")
			os.Remove(filepath.Join(results, f.Name()))
			os.Remove(filepath.Join(results, "cni-loopback-"+id+"-lo"))
		}
	}
	// The kubelet's device-plugin socket has a fixed path too: it goes once no other
	// cluster's kubelet runs.
	if !otherKubelets(dir) {
		os.Remove("/var/lib/kubelet/device-plugins/kubelet.sock")
	}
	for _, d := range []string{"/run/containerd/s", "/run/containerd", results, "/var/lib/cni",
		"/var/lib/kubelet/device-plugins", "/var/lib/kubelet", "/var/log/containers"} {
		os.Remove(d) // only when empty
	}
}

// otherKubelets reports whether a kubelet of another cluster under the same root runs.
func otherKubelets(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(filepath.Dir(dir), "*", "pids", "kubelet"))
	for _, f := range files {
		if filepath.Dir(filepath.Dir(f)) == dir {
			continue
		}
		if id, err := readProcID(f); err == nil && id.alive() {
			return true
		}
	}
	return false
}

// cgroupTree lists every cgroup of the cluster in the hierarchies mounted at mounts,
// parents before children.
func cgroupTree(mounts []string, cluster string) []string {
	var tree []string
	for _, m := range mounts {
		root := filepath.Join(m, cgroupName(cluster))
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				tree = append(tree, p)
			}
			return nil
		})
	}
	return tree
}

// killCgroupProcs SIGKILLs every process in the cgroups (the cluster's containers) until
// they are empty, boundedly.
func killCgroupProcs(tree []string) error {
	procsIn := func() []int {
		seen := map[int]bool{}
		var pids []int
		for _, cg := range tree {
			for _, f := range []string{"cgroup.procs", "tasks"} {
				b, err := os.ReadFile(filepath.Join(cg, f))
				if err != nil {
					continue
				}
				for _, l := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(l); err == nil && !seen[pid] && pid != os.Getpid() {
						seen[pid] = true
						pids = append(pids, pid)
					}
				}
			}
		}
		return pids
	}
	ok := waitUntil(10*time.Second, func() bool {
		pids := procsIn()
		for _, pid := range pids {
			unix.Kill(pid, unix.SIGKILL)
		}
		return len(pids) == 0
	})
	if !ok {
		return fmt.Errorf("processes %v still in the cluster's cgroups", procsIn())
	}
	return nil
}

// mount is one line of /proc/self/mountinfo.
type mount struct{ point, fstype string }

func readMounts() ([]mount, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var ms []mount
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		// ID parent major:minor root point options [optional...] - fstype source super
		if len(f) < 7 {
			continue
		}
		var fstype string
		for i := 6; i < len(f)-1; i++ {
			if f[i] == "-" {
				fstype = f[i+1]
				break
			}
		}
		ms = append(ms, mount{point: unescapeMount(f[4]), fstype: fstype})
	}
	return ms, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	var errs []error
	for range 3 { // mounts stacked on one point come off one per pass
		ms, err := readMounts()
		if err != nil {
			return err
		}
		var points []string
		for _, m := range ms {
			if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
				points = append(points, m.point)
			}
		}
		if len(points) == 0 {
			return nil
		}
		slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
		errs = errs[:0]
		for _, p := range points {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}
