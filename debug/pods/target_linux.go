package pods

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/detourmesh/detour/netns"
)

// nsGetNSType is NS_GET_NSTYPE of linux/nsfs.h: _IO(0xb7, 0x3).
const nsGetNSType = 0xb703

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
		if err != nil {
			return nil, err
		}
		if in := proxiesIn(k, found); len(in) > 0 {
			path = filepath.Join(f.proc(), strconv.Itoa(in[0].PID), "ns", "net")
		} else {
			path = filepath.Join(f.netnsDir(), names[k][0])
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
