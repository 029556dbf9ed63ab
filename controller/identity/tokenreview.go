package identity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
)

// TokenAudience is the audience a proxy's projected ServiceAccount token must be for: a token
// for the API server (or anything else) proves nothing here, and a token for Detour is worth
// nothing to the API server.
const TokenAudience = "identity.detour.io"

// TokenReviewer is the Kubernetes Verifier: the proxy's token is a projected ServiceAccount
// token, and the API server says whose it is (a TokenReview, which checks its signature, its
// expiry, its audience, and that its pod and ServiceAccount still exist). The identity proven is
// that ServiceAccount's, spiffe://<trust-domain>/ns/<namespace>/sa/<name>, and no other: a pod
// can ask only for its own ServiceAccount's certificate.
type TokenReviewer struct {
	reviews  authclient.TokenReviewInterface
	td       spiffeid.TrustDomain
	audience string
}

// NewTokenReviewer returns a Verifier that asks reviews (a clientset's
// AuthenticationV1().TokenReviews()) about tokens for audience (TokenAudience unless a test says
// otherwise), proving identities in td.
func NewTokenReviewer(reviews authclient.TokenReviewInterface, td spiffeid.TrustDomain, audience string) *TokenReviewer {
	if audience == "" {
		audience = TokenAudience
	}
	return &TokenReviewer{reviews: reviews, td: td, audience: audience}
}

// saPrefix starts the user name of a ServiceAccount token: system:serviceaccount:<ns>:<name>.
const saPrefix = "system:serviceaccount:"

// Verify implements Verifier. A token the API server rejects, or accepts for another audience
// or for a user that is not a ServiceAccount, wraps ErrUnproven; an API server that cannot be
// asked is an error that does not (the caller answers Unavailable, and the proxy retries).
func (r *TokenReviewer) Verify(ctx context.Context, token string) (spiffeid.ID, error) {
	if token == "" || len(token) > maxTokenLength {
		return spiffeid.ID{}, ErrUnproven
	}
	res, err := r.reviews.Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: []string{r.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("asking the API server about the token (TokenReview): %w", err)
	}
	st := res.Status
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return spiffeid.ID{}, fmt.Errorf("%w: the API server refused the token: %s", ErrUnproven, redact(why, token))
	}
	// The API server checks the audience against the request's and returns the ones the token
	// is good for; check it here too, so an authenticator that ignored Audiences cannot widen it.
	if !slices.Contains(st.Audiences, r.audience) {
		return spiffeid.ID{}, fmt.Errorf("%w: the token is not for audience %s (it is for %v)", ErrUnproven, r.audience, st.Audiences)
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, saPrefix), ":")
	if !strings.HasPrefix(st.User.Username, saPrefix) || !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return spiffeid.ID{}, fmt.Errorf("%w: the token belongs to %q, not a ServiceAccount", ErrUnproven, st.User.Username)
	}
	id, err := spiffeid.FromSegments(r.td, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: ServiceAccount %s/%s: %v", ErrUnproven, ns, sa, err)
	}
	return id, nil
}

// redact makes sure an error from the API server never carries the token back into a log.
func redact(msg, token string) string {
	if token != "" && strings.Contains(msg, token) {
		return strings.ReplaceAll(msg, token, "<token>")
	}
	return msg
}

// Chain is a Verifier that asks each of its Verifiers in turn and takes the first identity
// proven: the bootstrap tokens (local, cheap) before a TokenReview. When none proves one, the
// error wraps ErrUnproven only if every Verifier said the token proves nothing; otherwise one
// could not answer, and that error is returned.
type Chain []Verifier

// Verify implements Verifier.
func (c Chain) Verify(ctx context.Context, token string) (spiffeid.ID, error) {
	var unavailable error
	for _, v := range c {
		id, err := v.Verify(ctx, token)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, ErrUnproven) && unavailable == nil {
			unavailable = err
		}
	}
	if unavailable != nil {
		return spiffeid.ID{}, unavailable
	}
	return spiffeid.ID{}, ErrUnproven
}
