package pods

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Find lists every running `detour proxy`, sorted by namespace, name and PID. Processes that
// end while it reads them are left out.
func (f Finder) Find() ([]Pod, error) {
	entries, err := os.ReadDir(f.proc())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", f.proc(), err)
	}
	names, err := f.Names()
	if err != nil {
		return nil, err
	}
	boot, err := f.bootTime()
	if err != nil {
		return nil, err
	}
	isDetour := f.IsDetour
	if isDetour == nil {
		isDetour = isDetourBinary
	}
	type exeID struct{ dev, ino uint64 }
	checked := map[exeID]bool{} // executables already read: every proxy shares one binary
	var found []Pod
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		dir := filepath.Join(f.proc(), e.Name())
		argv := splitNUL(readFile(filepath.Join(dir, "cmdline")))
		if !IsProxyCommand(argv) {
			continue
		}
		exe := filepath.Join(dir, "exe")
		var st syscall.Stat_t
		if syscall.Stat(exe, &st) != nil {
			continue // gone, or a zombie
		}
		id := exeID{uint64(st.Dev), st.Ino}
		ok, seen := checked[id]
		if !seen {
			ok = isDetour(exe)
			checked[id] = ok
		}
		if !ok {
			continue
		}
		pod, err := f.read(pid, dir, argv, boot, names)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // it ended meanwhile
			}
			return nil, err
		}
		found = append(found, pod)
	}
	sortPods(found)
	return found, nil
}

func (f Finder) read(pid int, dir string, argv []string, boot time.Time, names map[nsKey][]string) (Pod, error) {
	env := splitNUL(readFile(filepath.Join(dir, "environ")))
	flags, err := ParseFlags(argv, env)
	if err != nil {
		return Pod{}, fmt.Errorf("the proxy PID %d: %w", pid, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "ns", "net"), &st); err != nil {
		return Pod{}, fmt.Errorf("the network namespace of PID %d: %w", pid, err)
	}
	key := nsKey{uint64(st.Dev), st.Ino}
	p := Pod{
		PID: pid, Name: flags.PodName, Namespace: flags.PodNamespace, Identity: flags.Identity, Flags: flags,
		NetNS: NetNS{Inode: st.Ino, dev: uint64(st.Dev), Names: names[key]},
	}
	if p.Namespace == "" {
		p.Namespace, _ = IdentityNamespace(flags.Identity)
	}
	p.Exe, _ = os.Readlink(filepath.Join(dir, "exe"))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Pod{}, err
	}
	if ticks, ok := startTicks(string(stat)); ok {
		// /proc counts in USER_HZ, 100 on every architecture Linux exports to user space.
		p.Started = boot.Add(time.Duration(ticks) * (time.Second / 100))
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return Pod{}, err
	}
	p.UID = statusUID(string(status))
	return p, nil
}

// Names maps every network namespace named under NetnsDir to its names.
func (f Finder) Names() (map[nsKey][]string, error) {
	out := map[nsKey][]string{}
	entries, err := os.ReadDir(f.netnsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", f.netnsDir(), err)
	}
	for _, e := range entries {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(f.netnsDir(), e.Name()), &st) != nil {
			continue
		}
		k := nsKey{uint64(st.Dev), st.Ino}
		out[k] = append(out[k], e.Name())
	}
	return out, nil
}

func (f Finder) bootTime() (time.Time, error) {
	data, err := os.ReadFile(filepath.Join(f.proc(), "stat"))
	if err != nil {
		return time.Time{}, fmt.Errorf("reading the boot time: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return time.Unix(s, 0), nil
			}
		}
	}
	return time.Time{}, errors.New("no btime in " + filepath.Join(f.proc(), "stat"))
}
