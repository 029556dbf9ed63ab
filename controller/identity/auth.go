package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/spiffe"
)

// AuthorizationKey is the gRPC metadata key that carries a bootstrap token, as
// "Bearer <token>" (RFC 6750 §2.1).
const AuthorizationKey = "authorization"

// ClaimKey is the gRPC metadata key that carries the identity a caller claims on a call whose
// request is read only after the caller is authenticated (Discovery.Stream), so that failed
// proofs are counted per claimed identity there too.
const ClaimKey = "detour-identity"

// Authenticator tells who calls an RPC on the controller's port, for the services that take no
// token in their request (Discovery.Stream). A caller proves its identity with a workload
// certificate of the CA on its TLS connection, or with a bootstrap token in its metadata. It is
// safe for concurrent use.
type Authenticator struct {
	td       spiffeid.TrustDomain
	roots    *x509.CertPool
	verifier Verifier
}

// NewAuthenticator returns an Authenticator that accepts certificates chaining to authority's
// trust anchor and tokens v proves (the Verifier Certify uses).
func NewAuthenticator(authority *ca.CA, v Verifier) *Authenticator {
	return &Authenticator{
		td:       authority.TrustDomain(),
		roots:    spiffe.Pool([]*x509.Certificate{authority.TrustAnchor()}),
		verifier: v,
	}
}

// Authenticate returns the identity the caller of ctx's RPC proved. claimed is the identity the
// caller says it has ("" if it names none): the throttle counts failures per claim (see
// Throttle), and the caller of Authenticate checks the proven identity against it. A client
// certificate, when presented, decides alone: an invalid one is refused even beside a good
// token, so a broken certificate shows at once instead of being masked until the token is
// rotated away. Refusals are codes.Unauthenticated errors saying what to present; a Verifier
// that cannot answer gives codes.Unavailable. No error contains the token.
func (a *Authenticator) Authenticate(ctx context.Context, claimed string) (spiffeid.ID, error) {
	ctx = withClaim(ctx, claimed)
	fc, counts := a.verifier.(failureCounter)
	if counts {
		if err := fc.Refused(ctx); err != nil {
			return spiffeid.ID{}, status.Error(codes.ResourceExhausted, err.Error())
		}
	}
	id, verified, err := a.authenticate(ctx)
	switch {
	case !counts || verified: // the Verifier counted the token, good or bad, itself
	case status.Code(err) == codes.Unauthenticated:
		fc.Failed(ctx)
	case err == nil:
		fc.Proved(ctx, id) // a valid workload certificate
	}
	return id, err
}

// failureCounter is a Verifier that also throttles failed proofs made without it (Throttle), so
// a caller sending no credential, a malformed one or a bad certificate is refused like one
// sending bad tokens, and a valid certificate earns standing like a good token.
type failureCounter interface {
	Refused(ctx context.Context) error
	Failed(ctx context.Context)
	Proved(ctx context.Context, id spiffeid.ID)
}

// authenticate is Authenticate without the throttle; verified says whether the Verifier was asked.
func (a *Authenticator) authenticate(ctx context.Context) (id spiffeid.ID, verified bool, err error) {
	if certs := peerCertificates(ctx); len(certs) > 0 {
		id, err := a.certificate(certs)
		return id, false, err
	}
	vals := metadata.ValueFromIncomingContext(ctx, AuthorizationKey)
	switch {
	case len(vals) == 0:
		return spiffeid.ID{}, false, status.Errorf(codes.Unauthenticated,
			"no credential: present a workload certificate of trust domain %s, or send a bootstrap token as %q metadata \"Bearer <token>\" (the proxy's --identity-token file)",
			a.td, AuthorizationKey)
	case len(vals) > 1:
		return spiffeid.ID{}, false, status.Errorf(codes.Unauthenticated, "%d %q metadata values: send one bootstrap token", len(vals), AuthorizationKey)
	}
	token, ok := bearer(vals[0])
	if !ok {
		return spiffeid.ID{}, false, status.Errorf(codes.Unauthenticated, "the %q metadata is not \"Bearer <token>\"", AuthorizationKey)
	}
	if len(token) > maxTokenLength {
		return spiffeid.ID{}, false, status.Errorf(codes.Unauthenticated, "the bootstrap token is longer than %d bytes", maxTokenLength)
	}
	id, err = a.verifier.Verify(ctx, token)
	switch {
	case errors.Is(err, ErrUnproven):
		return spiffeid.ID{}, true, status.Error(codes.Unauthenticated,
			"the bootstrap token proves no identity: check the proxy's --identity-token file against the controller's --tokens")
	case errors.Is(err, ErrThrottled):
		return spiffeid.ID{}, true, status.Error(codes.ResourceExhausted, err.Error())
	case err != nil && ctx.Err() != nil:
		return spiffeid.ID{}, true, status.FromContextError(ctx.Err()).Err()
	case err != nil:
		return spiffeid.ID{}, true, status.Errorf(codes.Unavailable, "could not verify the token: %v", err)
	}
	return id, true, nil
}

func (a *Authenticator) certificate(certs [][]byte) (spiffeid.ID, error) {
	id, err := spiffe.VerifyRawPeer(certs, a.roots, x509.ExtKeyUsageClientAuth, a.td, time.Now())
	if err != nil {
		return spiffeid.ID{}, status.Errorf(codes.Unauthenticated,
			"the client certificate is not a valid workload certificate of trust domain %s (%v): renew it, or connect without one and send a bootstrap token", a.td, err)
	}
	return id, nil
}

// peerCertificates returns the chain the caller presented on its TLS connection, leaf first.
func peerCertificates(ctx context.Context) [][]byte {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	raw := make([][]byte, len(info.State.PeerCertificates))
	for i, c := range info.State.PeerCertificates {
		raw[i] = c.Raw
	}
	return raw
}

// bearer returns the token of an authorization value "Bearer <token>". RFC 7235 §2.1: the scheme
// is case-insensitive.
func bearer(v string) (string, bool) {
	scheme, token, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimLeft(token, " ")
	return token, token != ""
}
