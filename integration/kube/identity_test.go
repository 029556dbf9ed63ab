package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourmesh/detour/api/identitypb"
	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/controller/identity"
	"github.com/detourmesh/detour/spiffe"
)

// craftedToken signs a ServiceAccount token with the cluster's own signing key, as the API
// server would, but with the expiry the test chooses: TokenRequest cannot make one that is
// already expired (its shortest life is 10 minutes).
func craftedToken(t *testing.T, ns, sa string, exp time.Time) string {
	t.Helper()
	acct, err := client.CoreV1().ServiceAccounts(ns).Get(context.Background(), sa, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(cluster.Dir, "pki", "sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(raw)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key := k.(*ecdsa.PrivateKey)
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	iat := exp.Add(-10 * time.Minute).Unix()
	signing := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(map[string]any{
		"iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:" + ns + ":" + sa,
		"aud": []string{identity.TokenAudience}, "iat": iat, "nbf": iat, "exp": exp.Unix(),
		"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]string{"name": sa, "uid": string(acct.UID)}},
	})
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// certifyAt asks the controller at addr for a certificate for id, proving it with token.
func certifyAt(t *testing.T, addr string, authority *ca.CA, id, token string) (*x509.Certificate, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(
		spiffe.ClientTLS(spiffe.Pool([]*x509.Certificate{authority.TrustAnchor()}), spiffe.ControllerID(authority.TrustDomain()), time.Now))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := identitypb.NewIdentityClient(conn).Certify(ctx, &identitypb.CertifyRequest{Identity: id, Csr: csr, Token: token})
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(resp.GetCertificate())
}

// TestTokenReview: the controller's Kubernetes verifier, against the real API server, proves
// exactly the ServiceAccount of a token for identity.detour.io and refuses an expired token, a
// token for another audience and a token for the API server; through detour-controller's
// Identity service a proxy gets a certificate for its own ServiceAccount only.
func TestTokenReview(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, "idt", nil)
	serviceAccount(t, ns, "stockdata")
	serviceAccount(t, ns, "stockweb")
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	stockID := "spiffe://cluster.local/ns/idt/sa/stockdata"
	v := identity.NewTokenReviewer(client.AuthenticationV1().TokenReviews(), td, "")

	good := serviceToken(t, ns, "stockdata", identity.TokenAudience)
	if id, err := v.Verify(ctx, good); err != nil || id.String() != stockID {
		t.Fatalf("the ServiceAccount's own token: %v, %v; want %s", id, err, stockID)
	}
	// The crafted token is valid when its expiry is ahead: so refusing it expired is the expiry.
	if id, err := v.Verify(ctx, craftedToken(t, ns, "stockdata", time.Now().Add(5*time.Minute))); err != nil || id.String() != stockID {
		t.Fatalf("a token signed like the API server's, not expired: %v, %v", id, err)
	}
	refused := map[string]string{
		"expired":            craftedToken(t, ns, "stockdata", time.Now().Add(-time.Minute)),
		"another audience":   serviceToken(t, ns, "stockdata", "vault"),
		"the API's audience": serviceToken(t, ns, "stockdata", "https://kubernetes.default.svc.cluster.local"),
		"garbage":            "not-a-token-at-all-0123456789",
	}
	for what, tok := range refused {
		id, err := v.Verify(ctx, tok)
		if !errors.Is(err, identity.ErrUnproven) || strings.Contains(err.Error(), tok) {
			t.Errorf("%s token: %v, %v; want ErrUnproven without the token in it", what, id, err)
		}
	}

	// Through the controller binary.
	caDir := newCA(t)
	c := startController(t, caDir, "--webhook-listen", "")
	authority, err := ca.Load(caDir)
	if err != nil {
		t.Fatal(err)
	}
	certify := func(id, token string) (*x509.Certificate, error) { return certifyAt(t, c.addr, authority, id, token) }
	cert, err := certify(stockID, good)
	if err != nil || len(cert.URIs) != 1 || cert.URIs[0].String() != stockID {
		t.Fatalf("Certify with the ServiceAccount's token: %v, %v", cert, err)
	}
	if _, err := certify(stockID, serviceToken(t, ns, "stockweb", identity.TokenAudience)); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Certify for stockdata with stockweb's token: %v, want PermissionDenied", err)
	}
	for what, tok := range refused {
		if what == "garbage" {
			continue // counted by the throttle like the others; three refusals are enough here
		}
		if _, err := certify(stockID, tok); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "does not prove") {
			t.Errorf("Certify with the %s token: %v, want PermissionDenied: the token does not prove the identity", what, err)
		}
	}
}
