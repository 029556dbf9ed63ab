// Package commands is `detour debug`: each command finds the pod it is given (debug/pods),
// gathers what it shows from the pod's rules and its proxy's admin port (debug/ruleset,
// debug/proxyapi, debug/check) and prints it as an aligned table, or as JSON for scripts.
// cmd/detour only wires flags to these functions.
package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/detourmesh/detour/debug/pods"
	"github.com/detourmesh/detour/debug/proxyapi"
	"github.com/detourmesh/detour/debug/ruleset"
)

// Env is what every command writes to and how it finds pods.
type Env struct {
	Out, Err io.Writer
	JSON     bool
	Finder   pods.Finder
	Now      func() time.Time // default time.Now
}

func (e Env) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// ErrFailed is returned by a command that printed its report and found failures: the caller
// exits non-zero without printing more.
var ErrFailed = errors.New("failures found")

// progressAfter is how long a step runs before the user is told what it is doing.
const progressAfter = time.Second

// step tells the user on Err what a step is doing once it has taken longer than a second, and
// how long it took then; quick steps print nothing.
func (e Env) step(what string) func() {
	start := time.Now()
	var mu sync.Mutex
	said := false
	t := time.AfterFunc(progressAfter, func() {
		mu.Lock()
		defer mu.Unlock()
		said = true
		fmt.Fprintf(e.Err, "detour debug: %s ...\n", what)
	})
	return func() {
		t.Stop()
		mu.Lock()
		defer mu.Unlock()
		if said {
			fmt.Fprintf(e.Err, "detour debug: %s: done in %s\n", what, time.Since(start).Round(10*time.Millisecond))
		}
	}
}

func (e Env) writeJSON(v any) error {
	enc := json.NewEncoder(e.Out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// target finds the pod arg names: among the running proxies, or, for a pod whose proxy is
// down, among the pods the namespaces' rules record.
func (e Env) target(arg string) (*pods.Target, error) {
	done := e.step("finding the pod " + arg)
	defer done()
	found, err := e.Finder.Find()
	if err != nil {
		return nil, err
	}
	f := e.Finder
	if f.Recorded == nil {
		f.Recorded = ruleset.RecordedPod
	}
	return f.Resolve(arg, found)
}

// proxyOf returns the target's proxy and a client of its admin port, or an error naming the pod
// when no proxy serves it.
func proxyOf(t *pods.Target) (pods.Pod, *proxyapi.Client, error) {
	switch p, ok := t.Proxy(); {
	case ok:
		return p, proxyapi.New(t.NS, p.Flags.AdminPort, t.Label()), nil
	case len(t.Proxies) == 0:
		return pods.Pod{}, nil, fmt.Errorf("%s: no detour proxy runs in its network namespace (detour debug check %s says more)", t.Label(), t.Arg)
	default:
		return pods.Pod{}, nil, fmt.Errorf("%s: %d detour proxies run in one network namespace; name one by its PID", t.Label(), len(t.Proxies))
	}
}

// ago writes how long ago t was, compactly: 3s, 4m12s, 5h3m, 2d4h.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return short(now.Sub(t))
}

// short writes d in at most two units.
func short(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	var s string
	switch {
	case d < time.Second:
		s = d.Round(time.Millisecond).String()
	case d < time.Minute:
		s = d.Round(time.Second).String()
	case d < time.Hour:
		s = fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		s = fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		s = fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	}
	if neg {
		return "-" + s
	}
	return s
}

// bytesText writes a byte count compactly: 512B, 12.3kB, 4.1MB.
func bytesText(n uint64) string {
	switch {
	case n < 1000:
		return fmt.Sprintf("%dB", n)
	case n < 1000_000:
		return fmt.Sprintf("%.1fkB", float64(n)/1000)
	case n < 1000_000_000:
		return fmt.Sprintf("%.1fMB", float64(n)/1000_000)
	}
	return fmt.Sprintf("%.1fGB", float64(n)/1000_000_000)
}

// identityPath shortens a SPIFFE ID of the default trust domain, spiffe://cluster.local/ns/N/sa/S,
// to N/sa/S for tables; other IDs stay whole, and JSON always carries the whole ID.
func identityPath(id string) string {
	if id == "" {
		return "-"
	}
	if rest, ok := strings.CutPrefix(id, "spiffe://cluster.local/ns/"); ok && strings.Count(rest, "/") == 2 && strings.Contains(rest, "/sa/") {
		return rest
	}
	return id
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// parallel runs fn for each index with at most 8 at once, and waits.
func parallel(n int, fn func(i int)) {
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(i)
		}()
	}
	wg.Wait()
}

// contextDone reports whether err is ctx's end, which a streaming command treats as a normal stop.
func contextDone(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || err == nil || strings.Contains(err.Error(), "context canceled"))
}
