package pods

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/detourmesh/detour/netns"
)

// nsGetNSType is NS_GET_NSTYPE of linux/nsfs.h: _IO(0xb7, 0x3).
const nsGetNSType = 0xb703

// byRecord looks for the pod arg names (name or namespace/name) in the rules' records of every
// network namespace of the node that runs no proxy, and returns a path to the one that records
// it; "" when none or several do.
func (f Finder) byRecord(arg string) string {
	if f.Recorded == nil {
		return ""
	}
	wantNS, wantName, qualified := strings.Cut(arg, "/")
	if !qualified {
		wantNS, wantName = "", arg
	}
	var hits []string
	for _, c := range f.namespaces() {
		ns, err := netns.OpenPath(c)
		if err != nil {
			continue
		}
		gotNS, gotName, ok := f.Recorded(ns)
		if ok && gotName == wantName && (!qualified || gotNS == wantNS) {
			hits = append(hits, c)
		}
	}
	if len(hits) != 1 {
		return ""
	}
	return hits[0]
}

// namespaces returns a path to every network namespace of the node but the caller's: those
// named under NetnsDir, and those processes are in.
func (f Finder) namespaces() []string {
	var self unix.Stat_t
	unix.Stat("/proc/self/ns/net", &self)
	seen := map[nsKey]bool{{uint64(self.Dev), self.Ino}: true}
	var out []string
	add := func(path string) {
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil {
			return
		}
		k := nsKey{uint64(st.Dev), st.Ino}
		if !seen[k] {
			seen[k] = true
			out = append(out, path)
		}
	}
	if entries, err := os.ReadDir(f.netnsDir()); err == nil {
		for _, e := range entries {
			add(filepath.Join(f.netnsDir(), e.Name()))
		}
	}
	if entries, err := os.ReadDir(f.proc()); err == nil {
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				add(filepath.Join(f.proc(), e.Name(), "ns", "net"))
			}
		}
	}
	return out
}

// Resolve finds what arg names (see Usage) among the proxies found by Find, and opens its
// network namespace. An argument that names nothing is an error listing what was found.
func (f Finder) Resolve(arg string, found []Pod) (*Target, error) {
	names, err := f.Names()
	if err != nil {
		return nil, err
	}
	var path string
	switch kindOf(arg) {
	case argPID:
		pid, err := strconv.Atoi(arg)
		if err != nil {
			return nil, fmt.Errorf("PID %q: %w", arg, err)
		}
		path = filepath.Join(f.proc(), strconv.Itoa(pid), "ns", "net")
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no process %d on this node (%s)", pid, Summary(found))
		}
	case argPath:
		path = arg
	default:
		k, err := matchName(arg, found, names)
		switch {
		case err == nil && len(proxiesIn(k, found)) > 0:
			path = filepath.Join(f.proc(), strconv.Itoa(proxiesIn(k, found)[0].PID), "ns", "net")
		case err == nil:
			path = filepath.Join(f.netnsDir(), names[k][0])
		default:
			if path = f.byRecord(arg); path == "" {
				return nil, err
			}
		}
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the network namespace of %q at %s: %w", arg, path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("opening the network namespace of %q: %w", arg, err)
	}
	if kind, err := unix.IoctlRetInt(fd, nsGetNSType); err != nil || kind != unix.CLONE_NEWNET {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is not a network namespace", path)
	}
	held := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd)
	ns, err := netns.OpenPath(held)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is not a network namespace: %w", path, err)
	}
	k := nsKey{uint64(st.Dev), st.Ino}
	return &Target{
		Arg: arg, NS: ns, fd: fd,
		NetNS:   NetNS{Inode: st.Ino, dev: uint64(st.Dev), Names: names[k]},
		Proxies: proxiesIn(k, found),
	}, nil
}
