package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServerTLS returns a TLS configuration for a server that is id in the CA's trust domain (the
// controller's gRPC port: identity.ControllerID). Its
// certificate is issued here, with a key made in memory, and issued again with a new key when
// 70 % of its ttl has passed (at the next handshake), so a long-running controller never serves
// an expired certificate. It fails at once if the first certificate cannot be issued.
//
// The configuration asks callers for a client certificate but does not require one (a proxy
// asking for its first certificate has none) and does not verify it: TLS only proves that the
// caller holds its key. The services check the chain per call (controller/identity
// Authenticator), so an expired or foreign certificate is refused with a status the caller can
// read instead of a handshake alert, and never stops a proxy from renewing with its token.
func (c *CA) ServerTLS(id spiffeid.ID, ttl time.Duration) (*tls.Config, error) {
	s := &selfIssued{ca: c, id: id, ttl: ttl}
	if _, err := s.get(nil); err != nil {
		return nil, err
	}
	anchors := x509.NewCertPool()
	anchors.AddCert(c.anchor)
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.get,
		NextProtos:     []string{"h2"},
		ClientAuth:     tls.RequestClientCert,
		// With RequestClientCert, ClientCAs only names the trust anchor in the certificate
		// request, so a client holding several certificates picks the mesh one.
		ClientCAs: anchors,
	}, nil
}

type selfIssued struct {
	ca  *CA
	id  spiffeid.ID
	ttl time.Duration
	// issue makes a new certificate; nil: a SPIFFE certificate for id.
	issue func() (*tls.Certificate, error)

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
}

func (s *selfIssued) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.ca.now()
	if s.cert != nil && now.Before(s.renewAt) {
		return s.cert, nil
	}
	issue := s.issue
	if issue == nil {
		issue = func() (*tls.Certificate, error) { return s.ca.issueTLS(s.id, s.ttl) }
	}
	cert, err := issue()
	if err != nil {
		if s.cert != nil && now.Before(s.cert.Leaf.NotAfter) {
			return s.cert, nil // keep the valid one; the next handshake tries again
		}
		return nil, err
	}
	s.cert = cert
	s.renewAt = now.Add(cert.Leaf.NotAfter.Sub(now) * 7 / 10)
	return cert, nil
}

// issueTLS issues a certificate for id to a fresh in-memory key, through Sign like any workload.
func (c *CA) issueTLS(id spiffeid.ID, ttl time.Duration) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate for %s: %w", id, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate for %s: %w", id, err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate for %s: %w", id, err)
	}
	leaf, chain, err := c.Sign(csr, id, ttl)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: append([][]byte{leaf.Raw}, chain...), PrivateKey: key, Leaf: leaf}, nil
}
