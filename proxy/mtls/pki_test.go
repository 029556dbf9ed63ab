package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/internal/testpki"
)

// The identities of the tests, as shared/DESIGN.md spells them.
var (
	idStockdata = spiffeid.RequireFromString("spiffe://cluster.local/ns/stocks/sa/stockdata")
	idStockweb  = spiffeid.RequireFromString("spiffe://cluster.local/ns/web/sa/stockweb")
	idOther     = spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y")
	idForeign   = spiffeid.RequireFromString("spiffe://evil.example/ns/stocks/sa/stockdata")
)

type testCA = testpki.CA

func newRoot(t testing.TB, name string) *testCA { return testpki.NewRoot(t, name) }

var (
	ekuServer = testpki.EKUServer
	ekuClient = testpki.EKUClient
	ekuBoth   = testpki.EKUBoth
)

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
	ca := root.Issuer("cluster.local issuer")
	return &pki{
		root:   root,
		ca:     ca,
		server: newSource(idStockdata, root.Roots, ca.Leaf(testpki.LeafSpec{ID: idStockdata, EKU: ekuBoth})),
		client: newSource(idStockweb, root.Roots, ca.Leaf(testpki.LeafSpec{ID: idStockweb, EKU: ekuBoth})),
	}
}
