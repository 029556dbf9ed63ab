// Package identity is the controller's Identity service: it exists to turn a proof of identity
// (a token) and a certificate signing request into a short-lived workload certificate, and to be
// the one place that decides whether a caller may have the identity it asks for. The CA
// (controller/ca) signs whatever it is told; this package makes sure it is only told to sign for
// identities that were proven.
package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/identitypb"
	"github.com/detourmesh/detour/controller/ca"
)

// DefaultTTL is the workload certificate lifetime (shared/DESIGN.md "Identity").
const DefaultTTL = 24 * time.Hour

// maxCSR bounds a certificate signing request: a P-256 CSR is about 250 bytes.
const maxCSR = 8 << 10

// Config configures a Server.
type Config struct {
	CA       *ca.CA
	Verifier Verifier
	// TTL is the lifetime of the certificates issued; default DefaultTTL.
	TTL time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Server implements identitypb.IdentityServer.
type Server struct {
	identitypb.UnimplementedIdentityServer
	cfg     Config
	anchors [][]byte
}

// NewServer returns the Identity service for cfg.
func NewServer(cfg Config) *Server {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{cfg: cfg, anchors: [][]byte{cfg.CA.TrustAnchor().Raw}}
}

// Certify implements identitypb.IdentityServer. The token is checked before the CSR is even
// parsed, so an unauthenticated caller cannot exercise the ASN.1 parser; an identity the token
// does not prove is refused with PermissionDenied, a malformed request with InvalidArgument.
func (s *Server) Certify(ctx context.Context, req *identitypb.CertifyRequest) (*identitypb.CertifyResponse, error) {
	log := s.cfg.Logger.With("peer", peerAddr(ctx))
	id, err := spiffeid.FromString(req.GetIdentity())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "identity %q is not a SPIFFE ID: %v", req.GetIdentity(), err)
	}
	td := s.cfg.CA.TrustDomain()
	if !id.MemberOf(td) || id.Path() == "" {
		return nil, status.Errorf(codes.InvalidArgument, "identity %s is not a workload in trust domain %s", id, td)
	}
	if len(req.GetToken()) > maxTokenLength {
		return nil, status.Errorf(codes.InvalidArgument, "the token is longer than %d bytes", maxTokenLength)
	}
	proven, err := s.cfg.Verifier.Verify(withClaim(ctx, id.String()), req.GetToken())
	if err != nil {
		if errors.Is(err, ErrUnproven) {
			log.Warn("certificate refused: token proves no identity", "id", id.String())
			return nil, status.Errorf(codes.PermissionDenied, "the token does not prove identity %s: check the proxy's token file", id)
		}
		if errors.Is(err, ErrThrottled) {
			log.Debug("certificate refused: throttled", "id", id.String())
			return nil, status.Error(codes.ResourceExhausted, err.Error())
		}
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		log.Error("verifying token failed", "id", id.String(), "err", err)
		return nil, status.Errorf(codes.Unavailable, "could not verify the token: %v", err)
	}
	if proven != id {
		log.Warn("certificate refused: token proves another identity", "id", id.String(), "proven", proven.String())
		return nil, status.Errorf(codes.PermissionDenied, "the token does not prove identity %s: it belongs to another identity", id)
	}
	if len(req.GetCsr()) > maxCSR {
		return nil, status.Errorf(codes.InvalidArgument, "the CSR is %d bytes, more than %d", len(req.GetCsr()), maxCSR)
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "the CSR is not a DER PKCS#10 request: %v", err)
	}
	leaf, chain, err := s.cfg.CA.Sign(csr, id, s.cfg.TTL)
	switch {
	case errors.Is(err, ca.ErrInvalidCSR), errors.Is(err, ca.ErrForeignID):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		log.Error("signing certificate failed", "id", id.String(), "err", err)
		return nil, status.Errorf(codes.Internal, "signing failed: %v", err)
	}
	log.Info("certificate issued", "id", id.String(), "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	return &identitypb.CertifyResponse{
		Certificate:   leaf.Raw,
		Intermediates: chain,
		TrustAnchors:  s.anchors,
		NotAfter:      leaf.NotAfter.Unix(),
	}, nil
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
