package spiffe_test

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/internal/testpki"
	"github.com/detourmesh/detour/spiffe"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("cluster.local")
	stockdata = spiffeid.RequireFromString("spiffe://cluster.local/ns/stocks/sa/stockdata")
)

func TestTrustAnchorFileNamesItsTrustDomain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	example := spiffeid.RequireTrustDomainFromString("example.org")
	if _, err := ca.Init(dir, example); err != nil {
		t.Fatal(err)
	}
	anchors, err := spiffe.LoadTrustAnchors(filepath.Join(dir, ca.AnchorCertFile))
	if err != nil {
		t.Fatal(err)
	}
	got, err := spiffe.TrustDomainOf(anchors[0])
	if err != nil || got != example {
		t.Fatalf("TrustDomainOf = %v, %v; want %s", got, err, example)
	}
	if _, err := spiffe.LoadTrustAnchors(filepath.Join(dir, ca.IssuerKeyFile)); err == nil || !strings.Contains(err.Error(), "no PEM CERTIFICATE") {
		t.Errorf("a key file loaded as trust anchors: %v", err)
	}
}

func TestVerifyRawPeerAcceptsTheCAsWorkloadCertificates(t *testing.T) {
	a, err := ca.Init(filepath.Join(t.TempDir(), "a"), td)
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
	id, err := spiffe.VerifyRawPeer(cert.Certificate, spiffe.Pool([]*x509.Certificate{a.TrustAnchor()}), x509.ExtKeyUsageServerAuth, td, time.Now())
	if err != nil || id != stockdata {
		t.Fatalf("VerifyRawPeer of a good chain = %s, %v", id, err)
	}
}

func TestVerifyRawPeerRefuses(t *testing.T) {
	root := testpki.NewRoot(t, "anchor")
	issuer := root.Issuer("issuer")
	other := testpki.NewRoot(t, "another anchor of the same trust domain")
	good := testpki.LeafSpec{ID: stockdata, EKU: testpki.EKUBoth}
	withSpec := func(f func(*testpki.LeafSpec)) [][]byte {
		s := good
		f(&s)
		return issuer.Leaf(s).Certificate
	}
	tests := []struct {
		name    string
		chain   [][]byte
		roots   *x509.CertPool
		eku     x509.ExtKeyUsage
		now     time.Time
		wantErr string
	}{
		{"a chain from another CA of the same trust domain", issuer.Leaf(good).Certificate, other.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "does not chain"},
		{"a leaf without its issuer", issuer.Leaf(good).Certificate[:1], root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "does not chain"},
		{"an expired certificate", issuer.Leaf(good).Certificate, root.Roots, x509.ExtKeyUsageClientAuth, time.Now().Add(48 * time.Hour), "does not chain"},
		{"no certificate", nil, root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "no certificate"},
		{"a CA certificate", withSpec(func(s *testpki.LeafSpec) { s.IsCA = true }), root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "is a CA"},
		{"a server-only certificate used as a client", withSpec(func(s *testpki.LeafSpec) { s.EKU = testpki.EKUServer }), root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "lacks extended key usage clientAuth"},
		{"a client-only certificate used as a server", withSpec(func(s *testpki.LeafSpec) { s.EKU = testpki.EKUClient }), root.Roots, x509.ExtKeyUsageServerAuth, time.Now(), "lacks extended key usage serverAuth"},
		{"a certificate without extended key usage", withSpec(func(s *testpki.LeafSpec) { s.EKU = nil }), root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "lacks extended key usage"},
		{"a foreign trust domain", withSpec(func(s *testpki.LeafSpec) {
			s.ID = spiffeid.RequireFromString("spiffe://evil.example/ns/stocks/sa/stockdata")
		}), root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "not \"cluster.local\""},
		{"DNS names only", withSpec(func(s *testpki.LeafSpec) { s.ID, s.DNS = spiffeid.ID{}, []string{"stockdata.stocks.svc"} }), root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "no SPIFFE ID"},
		{"a chain longer than four certificates", append(issuer.Leaf(good).Certificate, root.Cert.Raw, root.Cert.Raw, root.Cert.Raw), root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "more than 4"},
		{"a chain of more than 64 KiB", withSpec(func(s *testpki.LeafSpec) { s.Pad = 65 << 10 }), root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "bytes, more than"},
		{"garbage", [][]byte{[]byte("not a certificate")}, root.Roots, x509.ExtKeyUsageClientAuth, time.Now(), "certificate 0 of the chain"},
		{"no trust anchors", issuer.Leaf(good).Certificate, nil, x509.ExtKeyUsageClientAuth, time.Now(), "no trust anchors"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := spiffe.VerifyRawPeer(tt.chain, tt.roots, tt.eku, td, tt.now)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("VerifyRawPeer = %s, %v; want an error containing %q", id, err, tt.wantErr)
			}
		})
	}
	if id, err := spiffe.VerifyRawPeer(issuer.Leaf(good).Certificate, root.Roots, x509.ExtKeyUsageClientAuth, td, time.Now()); err != nil || id != stockdata {
		t.Fatalf("the good chain of the same PKI = %s, %v", id, err)
	}
}
