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
var ErrThrottled = errors.New("too many failed proofs of identity")

// Throttle wraps a Verifier so that callers who keep failing to prove an identity are refused
// without a check for a while. Tokens are beyond guessing, so this is not what keeps them
// secret: it bounds the work (a TokenReview is a call to the Kubernetes API) and the log lines
// that misconfigured or hostile clients cause. It is safe for concurrent use.
//
// Many honest proxies can share one source address (a node's SNAT, a NAT gateway), so the
// address alone cannot be what is refused: one bad client there would lock out every proxy
// behind it. A caller is known by its address and the identity it claims (the identity a
// Certify request names, or a discovery watch; "" when none), and failures count three ways:
//
//   - Per claim, (address, identity): Limit failures within Window refuse that claim until its
//     window ends. A bad client locks out only the identity it claims at its address; an honest
//     proxy behind the same address claiming another identity is still served. One claiming
//     the very identity of an honest proxy at the same address cannot be told from it before
//     the check, so it can lock that identity out there for a window, but no other.
//   - Per address, across claims: a client could otherwise escape the per-claim count by
//     claiming a new identity at every attempt (claims cost it nothing). AddressLimit failures
//     within Window (ten times Limit: ten distinct bad claims; one misconfigured client reaches
//     at most Limit, since its claim is then refused) refuse the address for every identity
//     that has no standing there.
//   - Standing: a successful proof of identity X from address A (a token the Verifier accepts,
//     or a valid workload certificate) forgets the failures of claim (A, X) and gives X
//     standing at A for StandingFor (longer than a certificate's life, so a proxy renewing or
//     reconnecting keeps it). A claim with standing is refused only by its own count, never by
//     the address's: the proxies that already work behind an address keep working whatever
//     else comes from it. A success touches nothing but its own claim: not the address's count
//     and not other claims', so a caller holding one valid token cannot wash out the failures
//     an attack left, and a claim's standing is earned only by proving that very identity.
type Throttle struct {
	v         Verifier
	limit     int
	addrLimit int
	window    time.Duration
	standing  time.Duration
	log       *slog.Logger
	now       func() time.Time

	mu     sync.Mutex
	claims map[claimKey]*failures
	addrs  map[netip.Addr]*failures
	proven map[claimKey]time.Time // last successful proof of the claim
}

// claimKey is a caller: a source address and the identity it claims ("" for none).
type claimKey struct {
	addr  netip.Addr
	claim string
}

type failures struct {
	n     int
	since time.Time // first failure of the current window
}

const (
	// maxTracked bounds the claims and the addresses a Throttle counts failures of, each; past
	// it, expired windows are dropped, and a newcomer goes uncounted while every window is live.
	maxTracked = 4096
	// maxStanding bounds the claims with standing; past it, expired ones are dropped, then any.
	maxStanding = 16384
	// addressFactor is AddressLimit over Limit.
	addressFactor = 10
	// StandingFor is how long a successful proof keeps its claim's standing at an address:
	// more than the 24 h of a certificate, which a proxy renews at 70 % of its life.
	StandingFor = 25 * time.Hour
)

// NewThrottle returns v throttled: limit failures per claim per window, ten times that per
// address (defaults 10 and 1 minute when not positive). A claim or address reaching its limit
// is logged once per window on log (default slog.Default()).
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
	return &Throttle{v: v, limit: limit, addrLimit: addressFactor * limit, window: window, standing: StandingFor,
		log: log, now: time.Now, claims: map[claimKey]*failures{}, addrs: map[netip.Addr]*failures{}, proven: map[claimKey]time.Time{}}
}

// claimKeyType keys the claimed identity in a context.
type claimKeyType struct{}

// withClaim returns ctx carrying the identity its caller claims, for the Throttle.
func withClaim(ctx context.Context, claimed string) context.Context {
	if _, err := spiffeid.FromString(claimed); err != nil {
		claimed = "" // not an identity: counted with the callers that claim none
	}
	return context.WithValue(ctx, claimKeyType{}, claimed)
}

// caller is who calls in ctx: the gRPC peer's address and the claim withClaim put in ctx.
func caller(ctx context.Context) (claimKey, bool) {
	addr, ok := callerAddr(ctx)
	claim, _ := ctx.Value(claimKeyType{}).(string)
	return claimKey{addr, claim}, ok
}

// Verify implements Verifier. The caller's address comes from the gRPC peer in ctx (a call
// without one is not throttled), its claim from Certify or Authenticate.
func (t *Throttle) Verify(ctx context.Context, token string) (spiffeid.ID, error) {
	if err := t.Refused(ctx); err != nil {
		return spiffeid.ID{}, err
	}
	id, err := t.v.Verify(ctx, token)
	switch {
	case errors.Is(err, ErrUnproven):
		t.Failed(ctx)
	case err == nil:
		t.Proved(ctx, id)
	}
	return id, err
}

// Refused returns an error wrapping ErrThrottled if the caller of ctx is refused for now.
func (t *Throttle) Refused(ctx context.Context) error {
	k, ok := caller(ctx)
	if !ok {
		return nil
	}
	until, why := t.refused(k)
	if why == "" {
		return nil
	}
	return fmt.Errorf("%w %s: retry after %s", ErrThrottled, why, until.UTC().Format(time.RFC3339))
}

// Failed counts a failed proof by the caller of ctx that did not go through Verify: no
// credential, a malformed one, a certificate that does not verify (Authenticator).
func (t *Throttle) Failed(ctx context.Context) {
	if k, ok := caller(ctx); ok {
		t.fail(k)
	}
}

// Proved records that the caller of ctx proved id without Verify (a workload certificate).
func (t *Throttle) Proved(ctx context.Context, id spiffeid.ID) {
	if k, ok := caller(ctx); ok {
		t.prove(claimKey{k.addr, id.String()})
	}
}

// live returns f if its window has not ended at now.
func (t *Throttle) live(f *failures, now time.Time) *failures {
	if f == nil || !now.Before(f.since.Add(t.window)) {
		return nil
	}
	return f
}

func (t *Throttle) refused(k claimKey) (until time.Time, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if f := t.live(t.claims[k], now); f != nil && f.n >= t.limit {
		return f.since.Add(t.window), fmt.Sprintf("claiming %s from %s", orNone(k.claim), k.addr)
	}
	if last, ok := t.proven[k]; ok && now.Before(last.Add(t.standing)) {
		return time.Time{}, ""
	}
	if f := t.live(t.addrs[k.addr], now); f != nil && f.n >= t.addrLimit {
		return f.since.Add(t.window), fmt.Sprintf("from %s for identities not proven from there before", k.addr)
	}
	return time.Time{}, ""
}

func (t *Throttle) fail(k claimKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if f := count(t.claims, k, t, now); f != nil && f.n == t.limit {
		t.log.Warn("proofs of identity claiming this identity from this address refused until its window ends: too many failed",
			"addr", k.addr.String(), "identity", orNone(k.claim), "failures", f.n, "until", f.since.Add(t.window).UTC())
	}
	if f := count(t.addrs, k.addr, t, now); f != nil && f.n == t.addrLimit {
		t.log.Warn("proofs of identity from this address refused until its window ends, but for identities proven from there before: too many failed",
			"addr", k.addr.String(), "failures", f.n, "until", f.since.Add(t.window).UTC())
	}
}

// count adds a failure of key to m at now and returns its window, or nil if m is full of live
// windows (the failure goes uncounted rather than memory unbounded).
func count[K comparable](m map[K]*failures, key K, t *Throttle, now time.Time) *failures {
	f := t.live(m[key], now)
	if f == nil {
		if _, tracked := m[key]; !tracked && len(m) >= maxTracked {
			for k, g := range m {
				if t.live(g, now) == nil {
					delete(m, k)
				}
			}
			if len(m) >= maxTracked {
				return nil
			}
		}
		f = &failures{since: now}
		m[key] = f
	}
	f.n++
	return f
}

func (t *Throttle) prove(k claimKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	delete(t.claims, k)
	if _, ok := t.proven[k]; !ok && len(t.proven) >= maxStanding {
		for old, last := range t.proven {
			if !now.Before(last.Add(t.standing)) {
				delete(t.proven, old)
			}
		}
		for old := range t.proven {
			if len(t.proven) < maxStanding {
				break
			}
			delete(t.proven, old)
		}
	}
	t.proven[k] = now
}

func orNone(claim string) string {
	if claim == "" {
		return "no identity"
	}
	return claim
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
