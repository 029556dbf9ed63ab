package identity

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
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

// The cases a gRPC client cannot easily send or that need a failing Verifier; Discovery.Watch's
// tests (controller/discovery) cover the rest over real TLS.
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
