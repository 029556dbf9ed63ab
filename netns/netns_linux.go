package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Create makes a new network namespace NAME, mounted at /run/netns/NAME like
// `ip netns add`, with its loopback up. It fails if NAME already exists.
func Create(name string) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	n := &NS{Name: name}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	// Claim the name before unsharing, so that a clash costs nothing.
	f, err := os.OpenFile(n.Path(), os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("creating namespace %s: %s already exists (a leftover of a crashed run? netns.Sweep removes those): %w", name, n.Path(), err)
	}
	if err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	f.Close()

	mounted := false
	err = onThread(
		func() error { return unix.Unshare(unix.CLONE_NEWNET) },
		func() error {
			if err := unix.Mount("/proc/thread-self/ns/net", n.Path(), "none", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind-mounting the namespace on %s: %w", n.Path(), err)
			}
			mounted = true
			// A socket made on this thread belongs to the new namespace.
			lo, err := netlink.LinkByName("lo")
			if err == nil {
				err = netlink.LinkSetUp(lo)
			}
			if err != nil {
				return fmt.Errorf("setting lo up: %w", err)
			}
			return nil
		})
	if err != nil {
		if mounted {
			unix.Unmount(n.Path(), unix.MNT_DETACH)
		}
		os.Remove(n.Path())
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return n, nil
}

// Open returns the existing namespace NAME (for example one made by
// `ip netns add`).
func Open(name string) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	n := &NS{Name: name}
	if err := checkMounted(n.Path()); err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", name, err)
	}
	return n, nil
}

// OpenPath returns the namespace at path: a process's /proc/PID/ns/net, a descriptor's
// /proc/PID/fd/N, or a bind mount anywhere (what a container runtime makes under /run/netns or
// /var/run/netns). Its Name is path. Do, Start and Run enter it; Delete is only for namespaces
// made by Create.
func OpenPath(path string) (*NS, error) {
	if err := checkMounted(path); err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", path, err)
	}
	return &NS{Name: path, path: path}, nil
}

// Delete unmounts and removes the namespace's name, like `ip netns delete`.
// The kernel frees the namespace, and the links in it, once nothing else
// holds it: callers end the processes they started in it, and close the
// sockets they opened in it, themselves.
func (n *NS) Delete() error {
	if n.path != "" {
		return fmt.Errorf("deleting namespace %s: it was opened by path, not made by Create", n.Name)
	}
	err := unix.Unmount(n.Path(), unix.MNT_DETACH)
	switch {
	case err == nil, errors.Is(err, unix.EINVAL):
		// EINVAL: not a mount point, a stale name file; remove it anyway.
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("deleting namespace %s: %w", n.Name, fs.ErrNotExist)
	default:
		return fmt.Errorf("deleting namespace %s: unmounting %s: %w", n.Name, n.Path(), err)
	}
	if err := os.Remove(n.Path()); err != nil {
		return fmt.Errorf("deleting namespace %s: %w", n.Name, err)
	}
	return nil
}

// Do runs fn inside the namespace, on a goroutine of its own locked to its
// OS thread, waits for it, and returns its error. The thread goes back to
// its original namespace afterwards; if that fails the thread is never
// handed back to the scheduler (the goroutine exits still locked, so the
// runtime ends the thread) and Do returns an error.
//
// Only fn's own goroutine is inside the namespace: goroutines it starts are
// not. Sockets and netlink handles made in fn stay in the namespace after Do
// returns. Because fn runs on another goroutine, it must return errors
// rather than call t.Fatal; a panic in fn is re-raised by Do.
func (n *NS) Do(fn func() error) error {
	fd, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("entering namespace %s: %w", n.Name, err)
	}
	defer unix.Close(fd)
	err = onThread(func() error { return unix.Setns(fd, unix.CLONE_NEWNET) }, fn)
	var ee *enterError
	if errors.As(err, &ee) {
		return fmt.Errorf("entering namespace %s: %w", n.Name, ee.err)
	}
	return err
}

// Start starts cmd inside the namespace: the child is forked from a thread
// that has entered it, so it inherits the namespace. The caller owns the
// process (Wait, Kill) and must end it before the namespace can be freed.
func (n *NS) Start(cmd *exec.Cmd) error {
	if err := n.Do(cmd.Start); err != nil {
		return fmt.Errorf("starting %s in namespace %s: %w", cmd.Path, n.Name, err)
	}
	return nil
}

// Run starts cmd inside the namespace and waits for it to finish.
func (n *NS) Run(cmd *exec.Cmd) error {
	if err := n.Start(cmd); err != nil {
		return err
	}
	return cmd.Wait()
}

// AsUID makes cmd run as uid and gid, with no supplementary groups; other
// SysProcAttr fields are kept.
func AsUID(cmd *exec.Cmd, uid, gid uint32) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid}
}

// Sweep deletes every named namespace whose name starts with prefix, the
// leftovers of a run that crashed before its cleanup. Processes still inside
// them (any of whose threads is in one) are killed with SIGKILL first, since
// their owner is gone; Sweep never kills its own process. It returns the
// names it removed.
func Sweep(prefix string) ([]string, error) {
	if prefix == "" {
		return nil, errors.New("sweeping namespaces: empty prefix would match every namespace")
	}
	entries, err := os.ReadDir(runDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sweeping namespaces: %w", err)
	}
	type nsID struct{ dev, ino uint64 }
	targets := map[nsID]string{}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		names = append(names, e.Name())
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(runDir, e.Name()), &st); err == nil {
			targets[nsID{st.Dev, st.Ino}] = e.Name()
		}
	}
	if len(names) == 0 {
		return nil, nil
	}

	// inside reports the pids with a thread in one of the targets.
	inside := func() []int {
		var pids []int
		procs, _ := os.ReadDir("/proc")
		for _, p := range procs {
			pid, err := strconv.Atoi(p.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/ns/net", pid))
			for _, t := range tasks {
				var st unix.Stat_t
				if unix.Stat(t, &st) == nil {
					if _, ok := targets[nsID{st.Dev, st.Ino}]; ok {
						pids = append(pids, pid)
						break
					}
				}
			}
		}
		return pids
	}
	var errs []error
	if len(targets) > 0 {
		// A killed process leaves its namespace when it exits (before it is
		// reaped), which takes a moment; wait for that, boundedly.
		deadline := time.Now().Add(5 * time.Second)
		for pids := inside(); len(pids) > 0; pids = inside() {
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("processes %v still inside after SIGKILL", pids))
				break
			}
			for _, pid := range pids {
				if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("killing pid %d: %w", pid, err))
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	var removed []string
	for _, name := range names {
		if err := (&NS{Name: name}).Delete(); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("sweeping namespaces %s*: %w", prefix, err)
	}
	return removed, nil
}

// enterError marks a failure to enter the namespace, as opposed to fn's own.
type enterError struct{ err error }

func (e *enterError) Error() string { return e.err.Error() }
func (e *enterError) Unwrap() error { return e.err }

// onThread runs fn on a new goroutine locked to its OS thread, after enter
// has moved that thread into another network namespace, and then moves it
// back. If moving back fails the goroutine exits still locked, which makes
// the runtime end the thread instead of reusing it in the wrong namespace.
func onThread(enter, fn func() error) error {
	type result struct {
		err      error
		returned bool // fn returned (no panic, no runtime.Goexit)
		panicked bool
		panicVal any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var res result
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: &enterError{fmt.Errorf("opening the current namespace: %w", err)}}
			return
		}
		defer func() {
			if !res.returned {
				if r := recover(); r != nil {
					res.panicked, res.panicVal = true, r
				}
			}
			if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
				unix.Close(orig)
				res.err = errors.Join(res.err, fmt.Errorf("returning to the original namespace (thread discarded): %w", err))
				done <- res
				return // still locked: the runtime ends this thread
			}
			unix.Close(orig)
			runtime.UnlockOSThread()
			done <- res
		}()
		if err := enter(); err != nil {
			res.err, res.returned = &enterError{err}, true
			return
		}
		res.err = fn()
		res.returned = true
	}()
	res := <-done
	if res.panicked {
		panic(res.panicVal)
	}
	if !res.returned && res.err == nil {
		return errors.New("fn exited its goroutine without returning (runtime.Goexit, e.g. t.FailNow inside Do)")
	}
	return res.err
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return fmt.Errorf("invalid namespace name %q", name)
	}
	return nil
}

// checkMounted reports whether path is a mounted namespace rather than a
// missing or stale (unmounted) name.
func checkMounted(path string) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return err
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%s is not a mounted namespace (a stale name? netns.Sweep removes it)", path)
	}
	return nil
}
