package discovery

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	fileV1  = "services:\n  - name: a.b\n    addresses: [\"198.19.0.1:80\"]\n"
	fileV2  = "services:\n  - name: a.b\n    addresses: [\"198.19.0.2:80\"]\n"
	fileV3  = "services:\n  - name: a.b\n    addresses: [\"198.19.0.3:80\"]\n"
	fileBad = "services:\n  - name: a.b\n    addresses: [\"198.19.0.1:0\"]\n"
)

// logRecorder is a slog.Handler that keeps every record, for tests that count log lines.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	r.mu.Lock()
	r.msgs = append(r.msgs, b.String())
	r.mu.Unlock()
	return nil
}

func (r *logRecorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// vip is the first address of the only service, which is how the test files differ.
func vip(s *Snapshot) string { return s.Services()[0].Addresses[0].String() }

func newTestFile(t *testing.T, content string) (string, *File, *logRecorder) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "discovery.yaml")
	writeFile(t, path, content)
	logs := &logRecorder{}
	f, err := NewFile(path, FileOptions{Interval: 5 * time.Millisecond, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	return path, f, logs
}

// waitFor receives snapshots until one has the wanted VIP. The deadline only bounds a failing
// test; nothing here asserts on time.
func waitFor(t *testing.T, ch <-chan *Snapshot, want string) *Snapshot {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed while waiting for %s", want)
			}
			if vip(s) == want {
				return s
			}
		case <-deadline:
			t.Fatalf("no snapshot with %s arrived", want)
		}
	}
}

func TestFileWatchDeliversTheCurrentSnapshotThenChanges(t *testing.T) {
	path, f, logs := newTestFile(t, fileV1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := f.Watch(ctx)
	if s := <-ch; vip(s) != "198.19.0.1:80" {
		t.Fatalf("first snapshot has %s", vip(s))
	}
	writeFile(t, path, fileV2)
	waitFor(t, ch, "198.19.0.2:80")
	if vip(f.Snapshot()) != "198.19.0.2:80" {
		t.Errorf("Snapshot() has %s after the reload", vip(f.Snapshot()))
	}
	if logs.count("discovery file reloaded") == 0 {
		t.Error("the reload was not logged")
	}
	cancel()
	for range ch {
	}
}

func TestFileFollowsAConfigMapSymlinkSwap(t *testing.T) {
	// Kubernetes mounts a ConfigMap as name -> ..data/name, ..data -> ..<timestamp>/, and
	// updates it by pointing ..data at a new directory with one rename.
	dir := t.TempDir()
	mkVersion := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "discovery.yaml"), content)
	}
	mkVersion("..v1", fileV1)
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "discovery.yaml")
	if err := os.Symlink("..data/discovery.yaml", path); err != nil {
		t.Fatal(err)
	}
	f, err := NewFile(path, FileOptions{Interval: 5 * time.Millisecond, Logger: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := f.Watch(ctx)
	mkVersion("..v2", fileV2)
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ch, "198.19.0.2:80")
}

func TestFileKeepsTheLastGoodSnapshot(t *testing.T) {
	path, f, logs := newTestFile(t, fileV1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := f.Watch(ctx)
	<-ch
	writeFile(t, path, fileBad)
	deadline := time.Now().Add(10 * time.Second)
	for logs.count("not reloaded") == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := logs.count(path + ":3: services[0].addresses[0]"); n != 1 {
		t.Fatalf("the parse error was logged %d times, want once with its line", n)
	}
	if vip(f.Snapshot()) != "198.19.0.1:80" {
		t.Errorf("Snapshot() has %s, want the last good 198.19.0.1:80", vip(f.Snapshot()))
	}
	writeFile(t, path, fileV3)
	waitFor(t, ch, "198.19.0.3:80")
}

func TestNewFileRejects(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, fileBad)
	tests := []struct {
		name string
		path string
		want string
	}{
		{"a missing file", filepath.Join(dir, "missing.yaml"), "reading discovery file: stat"},
		{"a file that does not parse", bad, bad + ":3: services[0].addresses[0]: 198.19.0.1:0: port 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewFile(tt.path, FileOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewFile = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// The poll steps are tested one by one with a chosen clock: what each poll does must not depend
// on scheduling.
func TestPollSteps(t *testing.T) {
	type step struct {
		write   string // new content before this poll; "" keeps the file
		remove  bool   // delete the file before this poll
		stale   bool   // pretend the last read was long after the file's mtime (not racy)
		advance time.Duration
		applied string // VIP of the snapshot the poll applies; "" for none
	}
	tests := []struct {
		name   string
		steps  []step
		errors int // "not reloaded" log lines at the end
	}{
		{
			name: "a change is applied once two polls read the same bytes",
			steps: []step{
				{write: fileV2},
				{applied: "198.19.0.2:80"},
				{},
			},
		},
		{
			name: "a file caught half written is not parsed",
			steps: []step{
				{write: fileV2[:len(fileV2)-10]},
				{write: fileV2},
				{applied: "198.19.0.2:80"},
			},
		},
		{
			name: "a broken file is logged once however often it is polled",
			steps: []step{
				{write: fileBad},
				{},
				{},
				{advance: time.Minute},
				{advance: time.Minute},
			},
			errors: 1,
		},
		{
			name: "a missing file is logged once and the snapshot kept",
			steps: []step{
				{remove: true},
				{remove: true},
				{write: fileV2},
				{applied: "198.19.0.2:80"},
			},
			errors: 1,
		},
		{
			name: "a rewrite that keeps size and mtime is found by the periodic resync",
			steps: []step{
				{write: fileV2, stale: true},
				{stale: true},
				{advance: time.Minute},
				{applied: "198.19.0.2:80"},
			},
		},
		{
			name: "touching the file without changing it applies nothing",
			steps: []step{
				{write: fileV1},
				{},
				{advance: time.Minute},
			},
		},
		{
			name: "a new error after a fixed file is logged again",
			steps: []step{
				{write: fileBad},
				{},
				{write: fileV1},
				{},
				{write: fileBad},
				{},
			},
			errors: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, f, logs := newTestFile(t, fileV1)
			now := time.Now()
			p := poller{f: f, st: f.initial, lastFull: now}
			orig, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tt.steps {
				if s.remove {
					os.Remove(path)
				}
				if s.write != "" {
					writeFile(t, path, s.write)
					if s.stale {
						// Same size and mtime as the original: only the bytes differ.
						if err := os.Chtimes(path, orig.ModTime(), orig.ModTime()); err != nil {
							t.Fatal(err)
						}
					}
				}
				if s.stale {
					p.st.readAt = orig.ModTime().Add(time.Hour)
				}
				now = now.Add(time.Millisecond + s.advance)
				snap := p.once(now)
				got := ""
				if snap != nil {
					got = vip(snap)
				}
				if got != s.applied {
					t.Fatalf("poll %d applied %q, want %q", i, got, s.applied)
				}
			}
			if n := logs.count("not reloaded"); n != tt.errors {
				t.Errorf("%d errors logged, want %d: %q", n, tt.errors, logs.msgs)
			}
		})
	}
}

func TestWatchClosesItsChannelWhenTheContextEnds(t *testing.T) {
	_, f, _ := newTestFile(t, fileV1)
	ctx, cancel := context.WithCancel(context.Background())
	ch := f.Watch(ctx)
	cancel()
	for range ch {
	}
}
