package mtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The identities of the tests, as shared/DESIGN.md spells them.
var (
	idStockdata = spiffeid.RequireFromString("spiffe://cluster.local/ns/stocks/sa/stockdata")
	idStockweb  = spiffeid.RequireFromString("spiffe://cluster.local/ns/web/sa/stockweb")
	idOther     = spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y")
	idForeign   = spiffeid.RequireFromString("spiffe://evil.example/ns/stocks/sa/stockdata")
)

var (
	ekuServer = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	ekuClient = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	ekuBoth   = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

// testCA is a certificate authority: a self-signed trust anchor, or an issuer under one.
type testCA struct {
	t     testing.TB
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	chain []*x509.Certificate // issuers above this CA up to, not including, the anchor
	roots *x509.CertPool      // the anchor
}

var serial atomic.Int64

func newKey(t testing.TB) *ecdsa.PrivateKey {
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

// newRoot makes a trust anchor.
func newRoot(t testing.TB, name string) *testCA {
	key := newKey(t)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"detour test"}, CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	cert := sign(t, tmpl, tmpl, &key.PublicKey, key)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return &testCA{t: t, cert: cert, key: key, roots: roots}
}

// issuer makes an intermediate CA under ca.
func (ca *testCA) issuer(name string) *testCA {
	key := newKey(ca.t)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"detour test"}, CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	cert := sign(ca.t, tmpl, ca.cert, &key.PublicKey, ca.key)
	chain := append([]*x509.Certificate{cert}, ca.chain...)
	return &testCA{t: ca.t, cert: cert, key: key, chain: chain, roots: ca.roots}
}

// leafSpec describes a workload certificate; zero fields take a valid SVID's values.
type leafSpec struct {
	id        spiffeid.ID // the URI SAN; zero: none
	dns       []string
	eku       []x509.ExtKeyUsage // nil: no extension at all
	notBefore time.Time
	notAfter  time.Time
	pad       int // bytes of an extra extension, to make the certificate large
}

// leaf issues a certificate and returns it with its key and the issuer chain, as a proxy
// presents it.
func (ca *testCA) leaf(spec leafSpec) *tls.Certificate {
	key := newKey(ca.t)
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"detour test"}},
		NotBefore:   spec.notBefore,
		NotAfter:    spec.notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: spec.eku,
		DNSNames:    spec.dns,
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Minute)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if !spec.id.IsZero() {
		tmpl.URIs = []*url.URL{spec.id.URL()}
	}
	if spec.pad > 0 {
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{
			Id: []int{1, 3, 6, 1, 4, 1, 99999, 1}, Value: make([]byte, spec.pad),
		})
	}
	cert := sign(ca.t, tmpl, ca.cert, &key.PublicKey, ca.key)
	out := &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	for _, c := range ca.chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out
}

// testSource is an identity.Source whose certificate the test swaps, as a renewal would.
type testSource struct {
	id    spiffeid.ID
	roots *x509.CertPool
	cert  atomic.Pointer[tls.Certificate]
}

func newSource(id spiffeid.ID, roots *x509.CertPool, cert *tls.Certificate) *testSource {
	s := &testSource{id: id, roots: roots}
	if cert != nil {
		s.cert.Store(cert)
	}
	return s
}

func (s *testSource) ID() spiffeid.ID       { return s.id }
func (s *testSource) Roots() *x509.CertPool { return s.roots }
func (s *testSource) Certificate() (*tls.Certificate, error) {
	if c := s.cert.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("no certificate issued yet")
}

// pki is the mesh of the tests: a trust anchor and an issuer under it, as the controller's CA
// would be set up, and the Sources of two workloads.
type pki struct {
	root, ca *testCA
	server   *testSource // stockdata
	client   *testSource // stockweb
}

func newPKI(t testing.TB) *pki {
	root := newRoot(t, "cluster.local trust anchor")
	ca := root.issuer("cluster.local issuer")
	return &pki{
		root:   root,
		ca:     ca,
		server: newSource(idStockdata, root.roots, ca.leaf(leafSpec{id: idStockdata, eku: ekuBoth})),
		client: newSource(idStockweb, root.roots, ca.leaf(leafSpec{id: idStockweb, eku: ekuBoth})),
	}
}
