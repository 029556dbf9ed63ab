package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/peer"
)

// ErrThrottled is wrapped by a Throttle's error for a caller refused for its earlier failures.
var ErrThrottled = errors.New("too many failed proofs of identity from this address")

// Throttle wraps a Verifier so that a client address that fails to prove an identity Limit
// times within Window is refused without a check until that window ends. Tokens are beyond
// guessing, so this is not what keeps them secret: it bounds the work (a TokenReview is a call
// to the Kubernetes API) and the log lines one misconfigured or hostile client can cause. A
// successful proof does not reset the count. It is safe for concurrent use.
type Throttle struct {
	v      Verifier
	limit  int
	window time.Duration
	log    *slog.Logger
	now    func() time.Time

	mu    sync.Mutex
	fails map[netip.Addr]*failures
}

type failures struct {
	n     int
	since time.Time // first failure of the current window
}

// maxTracked bounds the addresses a Throttle remembers; past it, expired windows are dropped.
const maxTracked = 4096

// NewThrottle returns v throttled: limit failures per address per window (defaults 10 and 1
// minute when not positive). An address reaching the limit is logged once per window on log
// (default slog.Default()).
func NewThrottle(v Verifier, limit int, window time.Duration, log *slog.Logger) *Throttle {
	if log == nil {
		log = slog.Default()
	}
	if limit <= 0 {
		limit = 10
	}
	if window <= 0 {
		window = time.Minute
	}
	return &Throttle{v: v, limit: limit, window: window, log: log, now: time.Now, fails: make(map[netip.Addr]*failures)}
}

// Verify implements Verifier. The caller's address comes from the gRPC peer in ctx; a call
// without one is not throttled.
func (t *Throttle) Verify(ctx context.Context, token string) (spiffeid.ID, error) {
	if err := t.Refused(ctx); err != nil {
		return spiffeid.ID{}, err
	}
	id, err := t.v.Verify(ctx, token)
	if errors.Is(err, ErrUnproven) {
		t.Failed(ctx)
	}
	return id, err
}

// Refused returns an error wrapping ErrThrottled if the caller of ctx is refused for now.
func (t *Throttle) Refused(ctx context.Context) error {
	addr, ok := callerAddr(ctx)
	if !ok {
		return nil
	}
	if until, refused := t.refused(addr); refused {
		return fmt.Errorf("%w (%s): retry after %s", ErrThrottled, addr, until.UTC().Format(time.RFC3339))
	}
	return nil
}

// Failed counts a failed proof by the caller of ctx that did not go through Verify: no
// credential, a malformed one, a certificate that does not verify (Authenticator).
func (t *Throttle) Failed(ctx context.Context) {
	if addr, ok := callerAddr(ctx); ok {
		t.fail(addr)
	}
}

func (t *Throttle) refused(addr netip.Addr) (until time.Time, refused bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.fails[addr]
	if f == nil {
		return time.Time{}, false
	}
	until = f.since.Add(t.window)
	if !t.now().Before(until) {
		delete(t.fails, addr)
		return time.Time{}, false
	}
	return until, f.n >= t.limit
}

func (t *Throttle) fail(addr netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	f := t.fails[addr]
	if f == nil || !now.Before(f.since.Add(t.window)) {
		if f == nil && len(t.fails) >= maxTracked {
			for a, g := range t.fails {
				if !now.Before(g.since.Add(t.window)) {
					delete(t.fails, a)
				}
			}
			if len(t.fails) >= maxTracked {
				return // full of live windows: this address goes uncounted rather than unbounded memory
			}
		}
		f = &failures{since: now}
		t.fails[addr] = f
	}
	f.n++
	if f.n == t.limit {
		t.log.Warn("proofs of identity from this address refused until its window ends: too many failed",
			"addr", addr.String(), "failures", f.n, "until", f.since.Add(t.window).UTC())
	}
}

// callerAddr is the IP address of the gRPC peer in ctx.
func callerAddr(ctx context.Context) (netip.Addr, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.Addr{}, false
	}
	if ta, ok := p.Addr.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap(), true
	}
	ap, err := netip.ParseAddrPort(p.Addr.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}
