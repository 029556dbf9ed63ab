package kubecluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// markerEnv is set in the environment of every process a cluster starts, to the cluster's
// state directory. containerd passes its environment to the shims it spawns, which are not
// our children and have no PID file: the marker is how Stop and Sweep find them. A process
// is only ever ended when its PID file (PID and start time) or its marker says it is ours.
const markerEnv = "DETOUR_KUBECLUSTER"

// proc is one process a cluster started and waits for.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been reaped
	err  error         // Wait's result, set before done closes
	log  string
}

// procID names a process by PID and start time (field 22 of /proc/PID/stat, in clock
// ticks since boot), which together never repeat while the machine runs.
type procID struct {
	pid   int
	start uint64
}

func (p procID) String() string { return fmt.Sprintf("%d %d", p.pid, p.start) }

// startTime reads the start time of pid; ok is false if it does not exist.
func startTime(pid int) (uint64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name (field 2) may hold spaces and parentheses: fields after it are
	// counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 {
		return 0, false
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, false // exited, waiting to be reaped: nothing left to end
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	return st, err == nil
}

// alive reports whether id still names the same running process.
func (id procID) alive() bool {
	st, ok := startTime(id.pid)
	return ok && st == id.start
}

func readProcID(path string) (procID, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procID{}, err
	}
	var id procID
	if _, err := fmt.Sscanf(string(b), "%d %d", &id.pid, &id.start); err != nil {
		return procID{}, fmt.Errorf("reading %s: %w", path, err)
	}
	return id, nil
}

func writeProcID(path string, pid int) error {
	st, ok := startTime(pid)
	if !ok {
		return fmt.Errorf("process %d exited at once", pid)
	}
	return os.WriteFile(path, []byte(procID{pid, st}.String()+"\n"), 0o644)
}

// hasMarker reports whether pid's environment marks it as a process of the cluster in dir.
func hasMarker(pid int, dir string) bool {
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	want := []byte(markerEnv + "=" + dir)
	for _, kv := range bytes.Split(env, []byte{0}) {
		if bytes.Equal(kv, want) {
			return true
		}
	}
	return false
}

// markedProcs lists the processes whose environment marks them as the cluster's in dir.
func markedProcs(dir string) []procID {
	var ids []procID
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if !hasMarker(pid, dir) {
			continue
		}
		if st, ok := startTime(pid); ok {
			ids = append(ids, procID{pid, st})
		}
	}
	return ids
}

// terminate sends SIGTERM, waits up to grace for the process to go, then SIGKILLs it and
// waits (boundedly) again. exited reports whether it is gone.
func terminate(id procID, grace time.Duration, exited func() bool) error {
	if exited == nil {
		exited = func() bool { return !id.alive() }
	}
	if exited() {
		return nil
	}
	if !id.alive() {
		return nil // not ours any more
	}
	if err := unix.Kill(id.pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("ending pid %d: %w", id.pid, err)
	}
	if waitUntil(grace, exited) {
		return nil
	}
	if id.alive() {
		if err := unix.Kill(id.pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("killing pid %d: %w", id.pid, err)
		}
	}
	if waitUntil(5*time.Second, exited) {
		return nil
	}
	return fmt.Errorf("pid %d still running after SIGKILL", id.pid)
}

// waitUntil polls cond every 10 ms (up to 100 ms as it goes on) until it holds or d passes.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	step := 10 * time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(step)
		step = min(step*2, 100*time.Millisecond)
	}
}

// start runs bin with args, its output in logs/NAME.log, its PID in pids/NAME, marked as
// the cluster's, in a process group of its own (so a terminal's Ctrl-C reaches the owner,
// which stops the cluster in order, rather than every component at once). starter, if set,
// starts the command (for instance inside a network namespace).
func (c *Cluster) start(name, bin string, args []string, starter func(*exec.Cmd) error) (*proc, error) {
	logPath := filepath.Join(c.Dir, "logs", name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), markerEnv+"="+c.Dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if starter == nil {
		starter = (*exec.Cmd).Start
	}
	if err := starter(cmd); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := writeProcID(filepath.Join(c.Dir, "pids", name), cmd.Process.Pid); err != nil {
		<-p.done
		return nil, fmt.Errorf("starting %s: %w (%s)", name, err, tail(logPath, 20))
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// exited reports whether p has exited (and been reaped).
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the last n lines of the file at path, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log: " + err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return filepath.Base(path) + ":\n" + strings.Join(lines, "\n")
}
