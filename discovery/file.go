package discovery

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// Source delivers discovery snapshots as they change: the discovery file (File), the Kubernetes
// API (the controller's), the controller's Discovery service (the proxy's, proxy/resolve).
type Source interface {
	// Watch returns a channel that delivers the current snapshot at once (a source that has
	// none yet, such as a controller not reached, delivers its first when it comes) and then
	// every new one. It does not block. Each call starts one goroutine, owned by the source, that runs
	// until ctx is done and then closes the channel. The channel holds at most one snapshot: a
	// consumer that falls behind receives the newest, never a backlog, so it may skip versions
	// but never sees an old one after a newer one. Every snapshot delivered is valid; a source
	// that fails to produce a new one keeps the last good one and says why in its log.
	//
	// A service unchanged between two snapshots SHOULD be the same *Service in both: consumers
	// (the controller's delta computation, the proxy's routing table) compare by pointer first
	// and by value (Service.Equal) only when the pointers differ, so a source that keeps its
	// pointers makes a change cost what changed, not the size of the mesh. File does this.
	Watch(ctx context.Context) <-chan *Snapshot
}

// Subscriber is a Source whose snapshots leave services Unresolved until they are used: the
// proxy's client of the controller learns every service's destinations but the endpoints only
// of the services the proxy routes to. The proxy calls Use from connection goroutines,
// concurrently; it does not block.
type Subscriber interface {
	Source
	// Use says the proxy routes to the service named name until release is called (once): the
	// source resolves the service's endpoints if it has not (a later snapshot has it with
	// Unresolved false) and follows them while any use is held and for a grace period after
	// the last release.
	Use(name string) (release func())
}

// FileOptions tunes a File source. The zero value is ready to use.
type FileOptions struct {
	// Interval between polls of the file; default 500 ms. A change is applied once two
	// consecutive polls read the same new bytes, so it takes effect within two intervals.
	Interval time.Duration
	// Resync forces a full read and hash at least this often even when the file's size, mtime
	// and inode look unchanged; default 10 s.
	Resync time.Duration
	// Logger receives reload results; default slog.Default().
	Logger *slog.Logger
}

// File is a Source that reads a discovery file and follows changes to it by polling.
//
// Polling rather than inotify is deliberate: Kubernetes updates a mounted ConfigMap by swapping
// a symlink to a new directory, which inotify watches on the file miss, and fsnotify is not a
// dependency. Each poll stats the path (following symlinks); the file is read and hashed when
// its size, mtime or inode changed, when its mtime is so close to the last read that a same-size
// rewrite could hide in the timestamp's granularity, and every Resync regardless. New bytes are
// applied only when two consecutive polls read them identically, so a file caught half written
// is not parsed. A reload that fails keeps the last good snapshot and logs the error once (again
// only when the error changes).
type File struct {
	path    string
	opts    FileOptions
	current atomic.Pointer[Snapshot]
	initial fileState
}

// fileState is what one poller knows about the file.
type fileState struct {
	info    os.FileInfo
	readAt  time.Time
	applied [sha256.Size]byte // bytes of the snapshot in force
}

// NewFile loads the discovery file at path. It fails if the file cannot be read or parsed, so
// a proxy never starts on a bad routing table.
func NewFile(path string, opts FileOptions) (*File, error) {
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	if opts.Resync <= 0 {
		opts.Resync = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	f := &File{path: path, opts: opts}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading discovery file: %w", err)
	}
	readAt := time.Now()
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading discovery file: %w", err)
	}
	snap, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	f.current.Store(snap)
	f.initial = fileState{info: info, readAt: readAt, applied: sha256.Sum256(data)}
	return f, nil
}

// Snapshot returns the snapshot in force: the last one that parsed.
func (f *File) Snapshot() *Snapshot { return f.current.Load() }

// Watch implements Source.
func (f *File) Watch(ctx context.Context) <-chan *Snapshot {
	ch := make(chan *Snapshot, 1)
	ch <- f.current.Load()
	go f.poll(ctx, ch)
	return ch
}

func (f *File) poll(ctx context.Context, ch chan *Snapshot) {
	defer close(ch)
	p := poller{f: f, st: f.initial, lastFull: time.Now()}
	t := time.NewTicker(f.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if snap := p.once(time.Now()); snap != nil {
			keepUnchanged(f.current.Load(), snap)
			f.current.Store(snap)
			// Latest wins: this goroutine is the only sender, so after dropping a stale
			// snapshot the send cannot block.
			select {
			case ch <- snap:
			default:
				select {
				case <-ch:
				default:
				}
				ch <- snap
			}
		}
	}
}

// racyWindow is how close to a read an mtime must be for the read to be untrustworthy: a write
// in the same timestamp tick leaves size and mtime alone (git's "racy clean" problem). Two
// seconds covers the coarsest common granularity (FAT, some network file systems).
const racyWindow = 2 * time.Second

type poller struct {
	f        *File
	st       fileState
	pending  *[sha256.Size]byte // new bytes seen once, waiting to be seen again
	failed   [sha256.Size]byte  // bytes that last failed to parse, not parsed again
	lastErr  string             // last error logged, to log each distinct error once
	lastFull time.Time
}

// once runs one poll and returns a new snapshot to apply, or nil.
func (p *poller) once(now time.Time) *Snapshot {
	info, err := os.Stat(p.f.path)
	if err != nil {
		p.fail(fmt.Errorf("reading discovery file: %w", err))
		return nil
	}
	changed := p.st.info == nil || info.Size() != p.st.info.Size() ||
		!info.ModTime().Equal(p.st.info.ModTime()) || !os.SameFile(info, p.st.info)
	racy := p.st.info != nil && p.st.readAt.Sub(info.ModTime()) < racyWindow
	resync := now.Sub(p.lastFull) >= p.f.opts.Resync
	if !changed && !racy && !resync && p.pending == nil {
		return nil
	}
	data, err := readFile(p.f.path)
	if err != nil {
		p.fail(fmt.Errorf("reading discovery file: %w", err))
		return nil
	}
	p.st.info, p.st.readAt, p.lastFull = info, now, now
	sum := sha256.Sum256(data)
	switch {
	case sum == p.st.applied:
		p.pending = nil
		// The file is back to what is in force: treat the next problem as new.
		p.lastErr, p.failed = "", [sha256.Size]byte{}
		return nil
	case p.pending == nil || *p.pending != sum:
		p.pending = &sum
		return nil
	}
	p.pending = nil
	if sum == p.failed {
		return nil
	}
	snap, err := Parse(p.f.path, data)
	if err != nil {
		p.failed = sum
		p.fail(err)
		return nil
	}
	p.st.applied = sum
	p.failed = [sha256.Size]byte{}
	p.lastErr = ""
	p.f.opts.Logger.Info("discovery file reloaded", "path", p.f.path,
		"revision", snap.Revision(), "services", len(snap.Services()))
	return snap
}

// fail logs err unless it is the error logged last: a file that stays broken for an hour logs
// once, not 7200 times.
func (p *poller) fail(err error) {
	msg := err.Error()
	if msg == p.lastErr {
		return
	}
	p.lastErr = msg
	p.f.opts.Logger.Error("discovery file not reloaded; keeping the last good version",
		"path", p.f.path, "revision", p.f.current.Load().Revision(), "err", msg)
}

func readFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	return data, nil
}
