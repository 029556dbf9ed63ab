package kubedemo

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// steps prints numbered steps, the progress of each while it waits, the time it took and
// what it showed, in the layout of `make demo`.
type steps struct {
	mu  sync.Mutex
	out io.Writer
	n   int
}

func (s *steps) say(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintln(s.out, msg)
}

// do runs fn as the next step; fn reports what it is waiting for through progress.
func (s *steps) do(what string, fn func(progress func(string)) (string, error)) error {
	s.mu.Lock()
	s.n++
	n := s.n
	fmt.Fprintf(s.out, "[%d] %s\n", n, what)
	s.mu.Unlock()
	start := time.Now()
	progress := func(status string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		fmt.Fprintf(s.out, "      %5.1fs  %s\n", time.Since(start).Seconds(), status)
	}
	detail, err := fn(progress)
	took := time.Since(start).Round(time.Millisecond)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		fmt.Fprintf(s.out, "    FAILED after %s\n", took)
		return fmt.Errorf("step %d, %s: %w", n, what, err)
	}
	fmt.Fprintf(s.out, "    done in %s\n", took)
	if detail = strings.TrimRight(detail, "\n"); detail != "" {
		fmt.Fprintf(s.out, "      %s\n", strings.ReplaceAll(detail, "\n", "\n      "))
	}
	return nil
}

// progressHandler turns the cluster harness's Info records into progress lines.
type progressHandler struct{ progress func(string) }

func (h progressHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h progressHandler) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "after" {
			if d, ok := a.Value.Any().(time.Duration); ok {
				msg += fmt.Sprintf(" (after %s)", d.Round(100*time.Millisecond))
			}
		}
		return true
	})
	h.progress(msg)
	return nil
}

func (h progressHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h progressHandler) WithGroup(string) slog.Handler      { return h }
