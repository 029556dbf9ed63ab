package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"time"
)

// ServingTLS is the TLS configuration of a server that clients outside the mesh verify by host
// name against the trust anchor: the injection webhook, which the API server calls with the
// anchor as the webhook configuration's caBundle. The certificate names dnsNames and ips (no
// SPIFFE ID: a mesh peer cannot pass for it, and it cannot pass for a mesh peer), is issued by
// the current issuer to an in-memory key, and is renewed at 70 % of its life; the issuer
// travels with it so the client reaches the anchor.
func (c *CA) ServingTLS(dnsNames []string, ips []net.IP, ttl time.Duration) (*tls.Config, error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, errors.New("a serving certificate needs a DNS name or an IP address")
	}
	s := &selfIssued{ca: c, ttl: ttl, issue: func() (*tls.Certificate, error) { return c.issueServing(dnsNames, ips, ttl) }}
	if _, err := s.get(nil); err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.get}, nil
}

func (c *CA) issueServing(dnsNames []string, ips []net.IP, ttl time.Duration) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issuing a serving certificate: %w", err)
	}
	iss := c.issuer.Load()
	now := c.now()
	notAfter := now.Add(ttl)
	if notAfter.After(iss.cert.NotAfter) {
		notAfter = iss.cert.NotAfter
	}
	if !now.Before(notAfter) {
		return nil, fmt.Errorf("the issuer expired at %s: make a new one with detour-controller ca rotate-issuer", iss.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	cn := ""
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
		NotBefore:    now.Add(-ClockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.cert, &key.PublicKey, iss.key)
	if err != nil {
		return nil, fmt.Errorf("signing a serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, iss.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}
