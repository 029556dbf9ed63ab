// Package testpki makes certificate authorities and workload certificates, good and bad, for the
// tests of every package that verifies identities (spiffe, proxy/mtls, controller/identity), so
// each tests the one verifier against the same crafted chains. Import it only from tests.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Extended key usages of the tests' certificates.
var (
	EKUServer = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	EKUClient = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	EKUBoth   = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

// CA is a certificate authority: a self-signed trust anchor, or an issuer under one.
type CA struct {
	t     testing.TB
	Cert  *x509.Certificate
	Key   *ecdsa.PrivateKey
	Chain []*x509.Certificate // issuers above this CA up to, not including, the anchor
	Roots *x509.CertPool      // the anchor
}

var serial atomic.Int64

// NewKey returns a new P-256 key.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub any, priv *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(serial.Add(1))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func caTemplate(name string) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"detour test"}, CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

// NewRoot makes a trust anchor.
func NewRoot(t testing.TB, name string) *CA {
	key := NewKey(t)
	tmpl := caTemplate(name)
	cert := sign(t, tmpl, tmpl, &key.PublicKey, key)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return &CA{t: t, Cert: cert, Key: key, Roots: roots}
}

// Issuer makes an intermediate CA under ca.
func (ca *CA) Issuer(name string) *CA {
	key := NewKey(ca.t)
	cert := sign(ca.t, caTemplate(name), ca.Cert, &key.PublicKey, ca.Key)
	chain := append([]*x509.Certificate{cert}, ca.Chain...)
	return &CA{t: ca.t, Cert: cert, Key: key, Chain: chain, Roots: ca.Roots}
}

// LeafSpec describes a workload certificate; zero fields take a valid SVID's values.
type LeafSpec struct {
	ID        spiffeid.ID // the URI SAN; zero: none
	DNS       []string
	EKU       []x509.ExtKeyUsage // nil: no extension at all
	NotBefore time.Time
	NotAfter  time.Time
	Pad       int  // bytes of an extra extension, to make the certificate large
	IsCA      bool // a CA certificate posing as a workload
}

// Leaf issues a certificate and returns it with its key and the issuer chain, as a proxy
// presents it.
func (ca *CA) Leaf(spec LeafSpec) *tls.Certificate {
	key := NewKey(ca.t)
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"detour test"}},
		NotBefore:   spec.NotBefore,
		NotAfter:    spec.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: spec.EKU,
		DNSNames:    spec.DNS,
	}
	if spec.IsCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.BasicConstraintsValid, tmpl.IsCA = true, true
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Minute)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if !spec.ID.IsZero() {
		tmpl.URIs = []*url.URL{spec.ID.URL()}
	}
	if spec.Pad > 0 {
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{
			Id: []int{1, 3, 6, 1, 4, 1, 99999, 1}, Value: make([]byte, spec.Pad),
		})
	}
	cert := sign(ca.t, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	out := &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	for _, c := range ca.Chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out
}
