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
func (c *CA) ServerTLS(id spiffeid.ID, ttl time.Duration) (*tls.Config, error) {
	s := &selfIssued{ca: c, id: id, ttl: ttl}
	if _, err := s.get(nil); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.get,
		NextProtos:     []string{"h2"},
	}, nil
}

type selfIssued struct {
	ca  *CA
	id  spiffeid.ID
	ttl time.Duration

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
	cert, err := s.ca.issueTLS(s.id, s.ttl)
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
