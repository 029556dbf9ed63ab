package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("cluster.local")
	stockdata = spiffeid.RequireFromString("spiffe://cluster.local/ns/stocks/sa/stockdata")
	foreign   = spiffeid.RequireFromString("spiffe://evil.example/ns/stocks/sa/stockdata")
)

func newCA(t *testing.T) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	c, err := Init(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func csrFor(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestInitWritesAnchorAndIssuerAndLoadReadsThem(t *testing.T) {
	c, dir := newCA(t)
	for name, want := range map[string]os.FileMode{
		AnchorKeyFile: 0o600, IssuerKeyFile: 0o600, AnchorCertFile: 0o644, IssuerCertFile: 0o644,
	} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != want {
			t.Errorf("%s has mode %o, want %o", name, got, want)
		}
	}
	if info, _ := os.Stat(dir); info.Mode().Perm() != 0o700 {
		t.Errorf("CA directory has mode %o, want 700", info.Mode().Perm())
	}
	a := c.TrustAnchor()
	if !a.IsCA || a.CheckSignatureFrom(a) != nil {
		t.Errorf("trust anchor is not a self-signed CA")
	}
	if pub, ok := a.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("trust anchor key is %T, want ECDSA P-256", a.PublicKey)
	}
	if err := c.Issuer().CheckSignatureFrom(a); err != nil {
		t.Errorf("issuer is not signed by the trust anchor: %v", err)
	}
	if !c.Issuer().MaxPathLenZero || !c.Issuer().IsCA {
		t.Errorf("issuer must be a CA that signs only leaves")
	}
	loaded, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.TrustAnchor().Equal(a) || !loaded.Issuer().Equal(c.Issuer()) || loaded.TrustDomain() != td {
		t.Errorf("Load did not read back what Init wrote")
	}
}

func TestInitRefusesToOverwrite(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
	}{
		{"an existing CA is never replaced", func(t *testing.T, dir string) {
			if _, err := Init(dir, td); err != nil {
				t.Fatal(err)
			}
		}},
		{"a directory holding only a stray issuer.key is left alone", func(t *testing.T, dir string) {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, IssuerKeyFile), []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			tt.prepare(t, dir)
			before := snapshotDir(t, dir)
			_, err := Init(dir, td)
			if err == nil || !strings.Contains(err.Error(), "never overwritten") {
				t.Fatalf("Init over an existing CA: err = %v, want a refusal", err)
			}
			if after := snapshotDir(t, dir); after != before {
				t.Errorf("the directory changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		b.WriteString(e.Name() + "=" + string(data) + ";")
	}
	return b.String()
}

func TestLoadRefusesAMismatchedIssuerKey(t *testing.T) {
	_, dir := newCA(t)
	_, other := newCA(t)
	key, err := os.ReadFile(filepath.Join(other, IssuerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, IssuerKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "does not hold the key") {
		t.Fatalf("Load with another CA's issuer key: err = %v", err)
	}
}

func TestSignIssuesASPIFFECertificate(t *testing.T) {
	c, _ := newCA(t)
	key := p256(t)
	// The CSR asks for more than it may have; only its key is used.
	csr := csrFor(t, key, &x509.CertificateRequest{
		DNSNames: []string{"stockdata.stocks.svc"},
		URIs:     []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/kube-system/sa/admin"}},
	})
	csr.Subject.CommonName = "admin"
	before := time.Now()
	leaf, chain, err := c.Sign(csr, stockdata, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != stockdata.String() {
		t.Errorf("URI SANs = %v, want exactly %s", leaf.URIs, stockdata)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.Subject.CommonName != "" {
		t.Errorf("leaf carries names besides its SPIFFE ID: DNS %v IP %v CN %q", leaf.DNSNames, leaf.IPAddresses, leaf.Subject.CommonName)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Errorf("leaf is not for the CSR's key")
	}
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("IsCA=%v KeyUsage=%v, want a leaf with digitalSignature only", leaf.IsCA, leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage = %v, want serverAuth and clientAuth", leaf.ExtKeyUsage)
	}
	if !leaf.NotBefore.Before(before) {
		t.Errorf("NotBefore %s is not in the past (clock skew)", leaf.NotBefore)
	}
	if d := leaf.NotAfter.Sub(before); d < time.Hour-2*time.Second || d > time.Hour+2*time.Second {
		t.Errorf("NotAfter is %s after issuance, want 1h", d)
	}
	if len(chain) != 1 || !bytes.Equal(chain[0], c.Issuer().Raw) {
		t.Errorf("chain is not [issuer]")
	}
	// A verifier with only the trust anchor accepts it for both uses; the issuer's name
	// constraint (its trust domain) holds.
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(c.TrustAnchor())
	inter.AddCert(c.Issuer())
	for _, use := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{use}}); err != nil {
			t.Errorf("verifying for %v: %v", use, err)
		}
	}
	again, _, err := c.Sign(csr, stockdata, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if again.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("two certificates share serial %s", leaf.SerialNumber)
	}
}

func TestSignRefuses(t *testing.T) {
	c, _ := newCA(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tampered := csrFor(t, p256(t), nil)
	tampered.Signature = append([]byte(nil), tampered.Signature...)
	tampered.Signature[len(tampered.Signature)-1] ^= 0xff
	// Another key's CSR with this key swapped in: the signature no longer matches the key.
	swapped := csrFor(t, p256(t), nil)
	swapped.PublicKey = &p256(t).PublicKey

	tests := []struct {
		name    string
		csr     *x509.CertificateRequest
		id      spiffeid.ID
		ttl     time.Duration
		wantErr error
		wantMsg string
	}{
		{"an RSA key is refused", csrFor(t, rsaKey, nil), stockdata, time.Hour, ErrInvalidCSR, "ECDSA P-256"},
		{"a P-384 key is refused", csrFor(t, p384, nil), stockdata, time.Hour, ErrInvalidCSR, "P-384"},
		{"an Ed25519 key is refused", csrFor(t, edKey, nil), stockdata, time.Hour, ErrInvalidCSR, "ECDSA P-256"},
		{"a CSR whose signature was altered is refused", tampered, stockdata, time.Hour, ErrInvalidCSR, "signature"},
		{"a CSR signed by another key than its own is refused", swapped, stockdata, time.Hour, ErrInvalidCSR, "signature"},
		{"no CSR is refused", nil, stockdata, time.Hour, ErrInvalidCSR, "none given"},
		{"an identity in another trust domain is refused", csrFor(t, p256(t), nil), foreign, time.Hour, ErrForeignID, "evil.example"},
		{"the trust domain itself is not a workload", csrFor(t, p256(t), nil), td.ID(), time.Hour, nil, "not a workload"},
		{"a zero lifetime is refused", csrFor(t, p256(t), nil), stockdata, 0, nil, "not positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf, chain, err := c.Sign(tt.csr, tt.id, tt.ttl)
			if err == nil || leaf != nil || chain != nil {
				t.Fatalf("Sign issued a certificate")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("err = %q, want it to mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestSignCapsLifetimeAtTheIssuersExpiry(t *testing.T) {
	c, _ := newCA(t)
	c.now = func() time.Time { return c.Issuer().NotAfter.Add(-time.Hour) }
	leaf, _, err := c.Sign(csrFor(t, p256(t), nil), stockdata, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.NotAfter.Equal(c.Issuer().NotAfter) {
		t.Errorf("NotAfter = %s, want the issuer's %s", leaf.NotAfter, c.Issuer().NotAfter)
	}
	c.now = func() time.Time { return c.Issuer().NotAfter.Add(time.Second) }
	if _, _, err := c.Sign(csrFor(t, p256(t), nil), stockdata, time.Hour); err == nil || !strings.Contains(err.Error(), "issuer expired") {
		t.Errorf("signing with an expired issuer: err = %v", err)
	}
}

func TestServerTLSRenewsItsCertificate(t *testing.T) {
	c, _ := newCA(t)
	now := time.Now()
	c.now = func() time.Time { return now }
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/detour/sa/controller")
	cfg, err := c.ServerTLS(id, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	first, err := cfg.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if first.Leaf.URIs[0].String() != id.String() {
		t.Errorf("controller certificate is for %v", first.Leaf.URIs)
	}
	now = now.Add(6 * time.Minute) // before 70 %
	if same, _ := cfg.GetCertificate(nil); same != first {
		t.Errorf("certificate renewed before 70 %% of its life")
	}
	now = now.Add(2 * time.Minute) // past 70 %
	renewed, err := cfg.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if renewed == first || renewed.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Errorf("certificate not renewed after 70 %% of its life")
	}
}

// TestServingTLS: the webhook's certificate verifies by host name against the trust anchor
// alone (what the API server does with caBundle), and carries no SPIFFE ID.
func TestServingTLS(t *testing.T) {
	c, err := Init(t.TempDir(), spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := c.ServingTLS([]string{"detour-controller.detour.svc"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := cfg.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.TrustAnchor())
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		ic, _ := x509.ParseCertificate(der)
		inter.AddCert(ic)
	}
	for _, name := range []string{"detour-controller.detour.svc", "127.0.0.1"} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("verifying for %s: %v", name, err)
		}
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "other.detour.svc", Roots: roots, Intermediates: inter}); err == nil {
		t.Error("the certificate verified for a name it does not carry")
	}
	if len(cert.Leaf.URIs) != 0 {
		t.Errorf("serving certificate carries URIs %v", cert.Leaf.URIs)
	}
	if _, err := c.ServingTLS(nil, nil, time.Hour); err == nil {
		t.Error("a serving certificate without names was made")
	}
}
