package demo

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/detourmesh/detour/netns"
)

// process is one program the demo started inside a pod.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// processes owns every program the demo starts and ends them, by PID, when it stops.
type processes struct {
	logs string // folder of each process's log, and of the discovery file
	mu   sync.Mutex
	list []*process
}

// start runs bin inside pod, as uid when uid >= 0, logging to a file of its own.
func (ps *processes) start(_ context.Context, pod *netns.Pod, name string, uid int, bin string, args ...string) (*process, error) {
	log, err := os.OpenFile(filepath.Join(ps.logs, pod.Name+"-"+name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if uid >= 0 {
		netns.AsUID(cmd, uint32(uid), uint32(uid))
	}
	if err := pod.NS.Start(cmd); err != nil {
		log.Close()
		return nil, fmt.Errorf("starting %s in %s: %w", name, pod.Name, err)
	}
	p := &process{name: pod.Name + "/" + name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// run runs bin inside pod to its end and returns what it printed.
func (ps *processes) run(ctx context.Context, pod *netns.Pod, bin string, args ...string) (string, error) {
	var out strings.Builder
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := pod.NS.Run(cmd); err != nil {
		return out.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// stop ends p: SIGTERM, then SIGKILL if it is still there after 5 s.
func (ps *processes) stop(p *process) error {
	ps.mu.Lock()
	ps.list = slices.DeleteFunc(ps.list, func(q *process) bool { return q == p })
	ps.mu.Unlock()
	select {
	case <-p.done:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop on SIGTERM within 5s and was killed", p.name)
	}
	return nil
}

// stopAll ends every process still running, the last started first.
func (ps *processes) stopAll() error {
	ps.mu.Lock()
	list := slices.Clone(ps.list)
	ps.mu.Unlock()
	var first error
	for i := len(list) - 1; i >= 0; i-- {
		if err := ps.stop(list[i]); err != nil && first == nil {
			first = err
		}
	}
	return first
}
