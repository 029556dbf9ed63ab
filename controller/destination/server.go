// Package destination is the controller's Discovery service: it exists to serve one discovery
// Source (the file today, Kubernetes later) to every proxy over gRPC, in the model both sides
// share (package discovery), so a proxy behaves the same whichever it reads. The source is
// followed once and each snapshot converted once, however many proxies watch. Only callers that
// prove a workload identity may watch: the services and endpoints of the mesh are not for anyone
// who can reach the port.
package destination

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/discovery"
)

// maxIDLength is the longest SPIFFE ID the SPIFFE ID specification requires support for.
const maxIDLength = 2048

// Authenticator tells who calls. Watch calls it once per call, from the call's handler
// goroutine, concurrently with other calls and before it reads the request; it may block (a
// token review is a network call) and must honour ctx. controller/identity.Authenticator is the
// controller's.
type Authenticator interface {
	// Authenticate returns the identity the caller proved, or a gRPC status error that Watch
	// returns as it is: codes.Unauthenticated, saying what to present, for a caller that proved
	// none. claimed is the identity the request names ("" for none): failed proofs are
	// throttled per claim, so a bad client does not lock out honest ones behind its address.
	Authenticate(ctx context.Context, claimed string) (spiffeid.ID, error)
}

// Config configures a Server. Source and Auth are required.
type Config struct {
	Source discovery.Source
	// Auth decides who may watch; without it every Watch is refused.
	Auth Authenticator
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Server implements discoverypb.DiscoveryServer over a discovery.Source. Run must be running for
// Watch to deliver anything.
type Server struct {
	discoverypb.UnimplementedDiscoveryServer
	src  discovery.Source
	auth Authenticator
	log  *slog.Logger

	mu      sync.Mutex
	current *discoverypb.Snapshot // nil until the source delivers
	changed chan struct{}         // closed and replaced when current changes
	stopped chan struct{}         // closed when Run returns: watches end, so a graceful stop can finish
}

// NewServer returns the Discovery service for cfg.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{src: cfg.Source, auth: cfg.Auth, log: cfg.Logger, changed: make(chan struct{}), stopped: make(chan struct{})}
}

// Run follows the source until ctx is done, converting each snapshot for the watchers. When it
// returns, every Watch ends with OK, so grpc.Server.GracefulStop does not wait for streams that
// would otherwise never end; proxies reconnect to another controller or this one restarted.
// Call it once.
func (s *Server) Run(ctx context.Context) error {
	defer close(s.stopped)
	for snap := range s.src.Watch(ctx) {
		pb := discovery.ToProto(snap)
		s.mu.Lock()
		s.current = pb
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
	return nil
}

// Current returns the snapshot in force and a channel closed when it is replaced.
func (s *Server) Current() (*discoverypb.Snapshot, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, s.changed
}

// Watch implements discoverypb.DiscoveryServer: the current snapshot at once, then each new one.
// A watcher whose connection is slow is sent the newest snapshot when its last send completes,
// never a queue of the ones it missed, so a slow proxy costs the controller one pending message.
//
// The caller is authenticated before the request is looked at, so an unknown caller cannot
// exercise the target parser. A request that names an identity must name the one proven: a
// proxy given another's token is refused instead of being logged under a name it does not have.
func (s *Server) Watch(req *discoverypb.WatchRequest, stream discoverypb.Discovery_WatchServer) error {
	ctx := stream.Context()
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	id, err := s.authenticate(ctx, req.GetIdentity())
	if err != nil {
		switch status.Code(err) {
		case codes.Canceled, codes.DeadlineExceeded: // the caller left; nothing was refused
		case codes.ResourceExhausted: // throttled; the throttle logged the address once
			s.log.Debug("discovery watch refused", "peer", addr, "err", status.Convert(err).Message())
		case codes.Unauthenticated, codes.PermissionDenied:
			s.log.Warn("discovery watch refused", "peer", addr, "err", status.Convert(err).Message())
		default:
			s.log.Error("discovery watch: authenticating the caller failed", "peer", addr, "err", err)
		}
		return err
	}
	if want := req.GetIdentity(); want != "" && want != id.String() {
		if len(want) > maxIDLength { // the caller's string, echoed to logs: bounded
			want = want[:maxIDLength] + "…"
		}
		s.log.Warn("discovery watch refused: the request names another identity than the caller proved",
			"peer", addr, "identity", id.String(), "requested", want)
		return status.Errorf(codes.PermissionDenied, "the request names another identity than the one the caller proved: %s", id)
	}
	targets, err := parseTargets(req.GetTargets())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	log := s.log.With("peer", addr, "identity", id.String())
	log.Info("discovery watch started", "targets", len(targets))
	defer log.Info("discovery watch ended")
	var sent *discoverypb.Snapshot
	for {
		cur, changed := s.Current()
		if cur != nil && cur != sent {
			if err := stream.Send(filter(cur, targets)); err != nil {
				return err
			}
			sent = cur
			continue // something newer may have come while Send blocked
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopped:
			return nil
		case <-changed:
		}
	}
}

func (s *Server) authenticate(ctx context.Context, claimed string) (spiffeid.ID, error) {
	if s.auth == nil {
		return spiffeid.ID{}, status.Error(codes.Internal, "the controller has no way to authenticate callers")
	}
	return s.auth.Authenticate(ctx, claimed)
}

// parseTargets normalizes the targets of a WatchRequest as the discovery file spells addresses:
// IP:port canonical, authorities lower case.
func parseTargets(raw []string) (map[string]bool, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	if len(raw) > 10000 {
		return nil, errors.New("more than 10000 targets: watch every service instead (no targets)")
	}
	t := make(map[string]bool, len(raw))
	for _, r := range raw {
		if ap, err := netip.ParseAddrPort(r); err == nil {
			t[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()] = true
			continue
		}
		t[strings.ToLower(strings.TrimSuffix(r, "."))] = true
	}
	return t, nil
}

// filter returns the part of snap whose services have an address or authority in targets.
func filter(snap *discoverypb.Snapshot, targets map[string]bool) *discoverypb.Snapshot {
	if targets == nil {
		return snap
	}
	out := &discoverypb.Snapshot{Revision: snap.Revision, TrustDomain: snap.TrustDomain}
	for _, svc := range snap.Services {
		if anyIn(svc.Addresses, targets) || anyIn(svc.Authorities, targets) {
			out.Services = append(out.Services, svc)
		}
	}
	return out
}

func anyIn(list []string, set map[string]bool) bool {
	for _, s := range list {
		if set[s] {
			return true
		}
	}
	return false
}
