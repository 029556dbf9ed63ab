package identity

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
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
			id, err := NewAuthenticator(c, tt.verifier).Authenticate(tt.ctx)
			st := status.Convert(err)
			if err == nil || st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("Authenticate = %s, %v; want %s containing %q", id, err, tt.wantCode, tt.wantMsg)
			}
			if strings.Contains(st.Message(), stockwebToken) {
				t.Errorf("the error reveals the token")
			}
		})
	}
	id, err := NewAuthenticator(c, testTokens(t)).Authenticate(withAuth(context.Background(), "Bearer "+stockwebToken))
	if err != nil || id != stockweb {
		t.Fatalf("a good token: %s, %v", id, err)
	}
}

// TestAuthenticatorThrottlesEveryKindOfFailedProof: missing credentials count like bad tokens,
// and a bad token counts once.
func TestAuthenticatorThrottlesEveryKindOfFailedProof(t *testing.T) {
	c := testCA(t)
	from := func(ip byte, values ...string) context.Context {
		md := metadata.MD{}
		for _, v := range values {
			md.Append(AuthorizationKey, v)
		}
		return peer.NewContext(metadata.NewIncomingContext(context.Background(), md),
			&peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(198, 18, 0, ip), Port: 40000}})
	}
	auth := NewAuthenticator(c, NewThrottle(testTokens(t), 3, time.Minute, quietLogger()))
	code := func(ctx context.Context) codes.Code {
		_, err := auth.Authenticate(ctx)
		return status.Code(err)
	}
	if got := code(from(9)); got != codes.Unauthenticated {
		t.Fatalf("no credential: %v", got)
	}
	if got := code(from(9, "Bearer not-a-token-of-this-controller")); got != codes.Unauthenticated {
		t.Fatalf("a bad token: %v", got)
	}
	if got := code(from(9, "Bearer "+stockwebToken)); got != codes.OK {
		t.Fatalf("a good token after two failures (limit 3; a bad token counts once): %v", got)
	}
	if got := code(from(9, "Basic xyz")); got != codes.Unauthenticated {
		t.Fatalf("a malformed credential: %v", got)
	}
	if got := code(from(9, "Bearer "+stockwebToken)); got != codes.ResourceExhausted {
		t.Fatalf("a good token after three failures: %v, want ResourceExhausted", got)
	}
	if got := code(from(10, "Bearer "+stockwebToken)); got != codes.OK {
		t.Fatalf("another address: %v", got)
	}
}
