package telemetry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/telemetrypb"
)

// claimKey is controller/claimKey (a test holds them equal), spelled here so that the
// detour CLI, which reads this package's types, does not link the controller's identity
// package and client-go with it.
const claimKey = "detour-identity"

// Limits on what one stream may send: far above what a proxy reports, low enough that one
// caller cannot make the controller parse without end.
const (
	maxRoutesPerReport = 5000
	maxBounds          = 64
	maxAddresses       = 16
	maxNameLength      = 253 // a Kubernetes name
	maxLabelLength     = 256 // bounds a series' memory (BenchmarkCollectorMemory uses the longest)
)

// Authenticator tells who calls (controller/identity.Authenticator, as Discovery uses).
type Authenticator interface {
	Authenticate(ctx context.Context, claimed string) (spiffeid.ID, error)
}

// Server implements telemetrypb.TelemetryServer into a Store.
type Server struct {
	telemetrypb.UnimplementedTelemetryServer
	store *Store
	auth  Authenticator
	log   *slog.Logger
}

// NewServer returns the Telemetry service recording into store; only callers auth proves are
// heard.
func NewServer(store *Store, auth Authenticator, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{store: store, auth: auth, log: log}
}

// Report implements telemetrypb.TelemetryServer. The caller is authenticated before its first
// message is read, and the first message must name the identity it proved.
func (s *Server) Report(st telemetrypb.Telemetry_ReportServer) error {
	ctx := st.Context()
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	claimed := ""
	if v := metadata.ValueFromIncomingContext(ctx, claimKey); len(v) == 1 {
		claimed = v[0]
	}
	if s.auth == nil {
		return status.Error(codes.Internal, "the controller has no way to authenticate callers")
	}
	id, err := s.auth.Authenticate(ctx, claimed)
	if err != nil {
		if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied {
			s.log.Warn("telemetry report refused", "peer", addr, "err", status.Convert(err).Message())
		}
		return err
	}
	req, err := st.Recv()
	if err != nil {
		return err
	}
	p := req.GetProxy()
	if p == nil {
		return status.Error(codes.InvalidArgument, "the first report names no proxy")
	}
	if p.GetIdentity() != id.String() {
		return status.Errorf(codes.PermissionDenied, "the report names another identity than the one the caller proved: %s", id)
	}
	pod := Pod{Namespace: p.GetNamespace(), Name: p.GetPod()}
	if pod.Name == "" { // a proxy not told its pod: named by its address
		pod.Name = addr
		if ap, err := netip.ParseAddrPort(addr); err == nil {
			pod.Name = ap.Addr().String()
		}
	}
	if len(pod.Name) > maxNameLength || len(pod.Namespace) > maxNameLength {
		return status.Errorf(codes.InvalidArgument, "pod name or namespace longer than %d bytes", maxNameLength)
	}
	if len(p.GetAddresses()) > maxAddresses {
		return status.Errorf(codes.InvalidArgument, "%d addresses: at most %d", len(p.GetAddresses()), maxAddresses)
	}
	var addrs []netip.Addr
	for _, a := range p.GetAddresses() {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "address %q: %v", a, err)
		}
		addrs = append(addrs, ip)
	}
	b := req.GetLatencyBounds()
	if len(b) == 0 || len(b) > maxBounds {
		return status.Errorf(codes.InvalidArgument, "%d latency bounds: want 1 to %d", len(b), maxBounds)
	}
	for i := 1; i < len(b); i++ {
		if !(b[i] > b[i-1]) {
			return status.Error(codes.InvalidArgument, "latency bounds are not ascending")
		}
	}
	mapping := bucketMap(b)
	s.store.Hello(pod, id.String(), addrs)
	defer s.store.Bye(pod)
	log := s.log.With("peer", addr, "identity", id.String(), "pod", pod.String())
	log.Debug("telemetry reports started")
	for {
		if err := s.add(pod, mapping, req); err != nil {
			log.Warn("telemetry report refused", "err", err)
			return err
		}
		if req, err = st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return st.SendAndClose(&telemetrypb.ReportResponse{})
			}
			return err
		}
	}
}

// add checks one report and records it. A report's time is the controller's, not the proxy's:
// clocks of pods drift, and the window is the controller's.
func (s *Server) add(pod Pod, mapping []int, req *telemetrypb.ReportRequest) error {
	if len(req.GetRoutes()) > maxRoutesPerReport {
		return status.Errorf(codes.InvalidArgument, "%d routes in one report: at most %d", len(req.GetRoutes()), maxRoutesPerReport)
	}
	routes := make([]RouteCounts, 0, len(req.GetRoutes()))
	for _, r := range req.GetRoutes() {
		if len(r.GetAuthority()) > maxLabelLength || len(r.GetEndpoint()) > maxLabelLength || len(r.GetPeerIdentity()) > maxLabelLength {
			return status.Errorf(codes.InvalidArgument, "a route label longer than %d bytes", maxLabelLength)
		}
		if len(r.GetLatency()) > len(mapping) {
			return status.Errorf(codes.InvalidArgument, "%d latency counts: the stream's bounds allow %d", len(r.GetLatency()), len(mapping))
		}
		routes = append(routes, RouteCounts{Inbound: r.GetInbound(), Authority: r.GetAuthority(), Endpoint: r.GetEndpoint(),
			Peer: r.GetPeerIdentity(), Requests: r.GetRequests(), Failures: r.GetFailures(), Latency: r.GetLatency()})
	}
	s.store.Add(pod, s.store.now(), time.Duration(req.GetIntervalMs())*time.Millisecond, mapping, routes)
	return nil
}

// Run expires old series every Resolution until ctx is done.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(Resolution)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.store.Expire()
		}
	}
}
