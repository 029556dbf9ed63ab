package identity_test

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/proxy/identity"
)

func TestTrustAnchorFileNamesItsTrustDomain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	example := spiffeid.RequireTrustDomainFromString("example.org")
	if _, err := ca.Init(dir, example); err != nil {
		t.Fatal(err)
	}
	anchors, err := identity.LoadTrustAnchors(filepath.Join(dir, ca.AnchorCertFile))
	if err != nil {
		t.Fatal(err)
	}
	got, err := identity.TrustDomainOf(anchors[0])
	if err != nil || got != example {
		t.Fatalf("TrustDomainOf = %v, %v; want %s", got, err, example)
	}
	if _, err := identity.LoadTrustAnchors(filepath.Join(dir, ca.IssuerKeyFile)); err == nil || !strings.Contains(err.Error(), "no PEM CERTIFICATE") {
		t.Errorf("a key file loaded as trust anchors: %v", err)
	}
}

func TestPeerIDRefuses(t *testing.T) {
	dir := t.TempDir()
	a, err := ca.Init(filepath.Join(dir, "a"), td)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.Init(filepath.Join(dir, "b"), td)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := a.ServerTLS(stockdata, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := cfg.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		chain   [][]byte
		roots   *x509.CertPool
		now     time.Time
		wantErr string
	}{
		{"a chain from another CA of the same trust domain", cert.Certificate, identity.Pool([]*x509.Certificate{b.TrustAnchor()}), time.Now(), "does not chain"},
		{"a leaf without its issuer", cert.Certificate[:1], identity.Pool([]*x509.Certificate{a.TrustAnchor()}), time.Now(), "does not chain"},
		{"an expired certificate", cert.Certificate, identity.Pool([]*x509.Certificate{a.TrustAnchor()}), time.Now().Add(2 * time.Hour), "does not chain"},
		{"no certificate", nil, identity.Pool([]*x509.Certificate{a.TrustAnchor()}), time.Now(), "no certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := identity.PeerID(tt.chain, tt.roots, x509.ExtKeyUsageServerAuth, tt.now)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("PeerID = %s, %v; want %q", id, err, tt.wantErr)
			}
		})
	}
	id, err := identity.PeerID(cert.Certificate, identity.Pool([]*x509.Certificate{a.TrustAnchor()}), x509.ExtKeyUsageServerAuth, time.Now())
	if err != nil || id != stockdata {
		t.Fatalf("PeerID of a good chain = %s, %v", id, err)
	}
}
