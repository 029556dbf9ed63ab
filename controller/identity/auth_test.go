package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// unreachable is a Verifier whose backend is down, as a TokenReview API can be.
type unreachable struct{}

func (unreachable) Verify(ctx context.Context, _ string) (spiffeid.ID, error) {
	if err := ctx.Err(); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.ID{}, errors.New("token review: connection refused")
}

// throttled is a Throttle that has already refused 198.18.0.9 for a failed proof.
func throttled(t *testing.T) *Throttle {
	th := NewThrottle(testTokens(t), 1, time.Minute, quietLogger())
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(198, 18, 0, 9), Port: 39999}})
	if _, err := th.Verify(ctx, "not-a-token-of-this-controller"); !errors.Is(err, ErrUnproven) {
		t.Fatal(err)
	}
	return th
}

// The cases a gRPC client cannot easily send or that need a failing Verifier; Discovery.Watch's
// tests (controller/destination) cover the rest over real TLS.
func TestAuthenticatorRefusesWhatItCannotTrust(t *testing.T) {
	c := testCA(t)
	withAuth := func(ctx context.Context, values ...string) context.Context {
		md := metadata.MD{}
		for _, v := range values {
			md.Append(AuthorizationKey, v)
		}
		return metadata.NewIncomingContext(ctx, md)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		verifier Verifier
		ctx      context.Context
		wantCode codes.Code
		wantMsg  string
	}{
		{"two tokens are refused", testTokens(t), withAuth(context.Background(), "Bearer "+stockwebToken, "Bearer "+stockdataToken),
			codes.Unauthenticated, "send one bootstrap token"},
		{"a bearer without a token is refused", testTokens(t), withAuth(context.Background(), "Bearer "),
			codes.Unauthenticated, "not \"Bearer <token>\""},
		{"an over-long token is refused before it is hashed", testTokens(t), withAuth(context.Background(), "Bearer "+strings.Repeat("a", maxTokenLength+1)),
			codes.Unauthenticated, "longer than"},
		{"a verifier that cannot answer makes the call unavailable, not refused", unreachable{}, withAuth(context.Background(), "Bearer "+stockwebToken),
			codes.Unavailable, "connection refused"},
		{"a caller that left is not refused", unreachable{}, withAuth(canceled, "Bearer "+stockwebToken),
			codes.Canceled, ""},
		{"a throttled address is told to come back later", throttled(t), peer.NewContext(withAuth(context.Background(), "Bearer "+stockwebToken),
			&peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(198, 18, 0, 9), Port: 40000}}),
			codes.ResourceExhausted, "retry after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := NewAuthenticator(c, tt.verifier).Authenticate(tt.ctx, "")
			st := status.Convert(err)
			if err == nil || st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("Authenticate = %s, %v; want %s containing %q", id, err, tt.wantCode, tt.wantMsg)
			}
			if strings.Contains(st.Message(), stockwebToken) {
				t.Errorf("the error reveals the token")
			}
		})
	}
	id, err := NewAuthenticator(c, testTokens(t)).Authenticate(withAuth(context.Background(), "Bearer "+stockwebToken), "")
	if err != nil || id != stockweb {
		t.Fatalf("a good token: %s, %v", id, err)
	}
}

// TestAuthenticatorThrottlesEveryKindOfFailedProof: missing and malformed credentials count
// like bad tokens, per claimed identity, a bad token counts once, and a valid workload
// certificate forgives its identity's failures like a good token.
func TestAuthenticatorThrottlesEveryKindOfFailedProof(t *testing.T) {
	c := testCA(t)
	md := func(values ...string) context.Context {
		md := metadata.MD{}
		for _, v := range values {
			md.Append(AuthorizationKey, v)
		}
		return metadata.NewIncomingContext(context.Background(), md)
	}
	from := func(ip byte, ctx context.Context) context.Context {
		return peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(198, 18, 0, ip), Port: 40000}})
	}
	leaf, chain, err := c.Sign(csr(t), stockweb, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs := []*x509.Certificate{leaf}
	for _, der := range chain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, cert)
	}
	withCert := func(ip byte) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(198, 18, 0, ip), Port: 40000},
			AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: certs}}})
	}
	auth := NewAuthenticator(c, NewThrottle(testTokens(t), 3, time.Minute, quietLogger()))
	code := func(ctx context.Context) codes.Code {
		_, err := auth.Authenticate(ctx, stockweb.String())
		return status.Code(err)
	}
	for i, ctx := range []context.Context{from(9, md()), from(9, md("Bearer not-a-token-of-this-controller"))} {
		if got := code(ctx); got != codes.Unauthenticated {
			t.Fatalf("failure %d: %v", i+1, got)
		}
	}
	if got := code(withCert(9)); got != codes.OK {
		t.Fatalf("a valid certificate after two failures (limit 3): %v", got)
	}
	// Forgiven: three more failures are needed to reach the limit again.
	for i, ctx := range []context.Context{from(9, md("Basic xyz")), from(9, md()), from(9, md("Bearer not-a-token-of-this-controller"))} {
		if got := code(ctx); got != codes.Unauthenticated {
			t.Fatalf("failure %d after the certificate: %v, want counted, not refused", i+1, got)
		}
	}
	if got := code(from(9, md("Bearer "+stockwebToken))); got != codes.ResourceExhausted {
		t.Fatalf("a good token after three failures: %v, want ResourceExhausted", got)
	}
	if got := code(from(10, md("Bearer "+stockwebToken))); got != codes.OK {
		t.Fatalf("another address: %v", got)
	}
}

// csr is a certificate signing request of a fresh P-256 key.
func csr(t *testing.T) *x509.CertificateRequest {
	t.Helper()
	r, err := x509.ParseCertificateRequest(csrDER(t, p256(t)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// peerContext is a context whose gRPC peer is the TCP address addr.
func peerContext(addr string) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr))})
}
