package spiffe

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// LoadTrustAnchors reads the trust anchors in a PEM file (one or more CERTIFICATE blocks), e.g.
// the controller CA's ca.crt.
func LoadTrustAnchors(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading trust anchors: %w", err)
	}
	return ParseTrustAnchors(data, path)
}

// ParseTrustAnchors reads the trust anchors in PEM data (one or more CERTIFICATE blocks); source
// names where data came from in errors (a file, an environment variable).
func ParseTrustAnchors(data []byte, source string) ([]*x509.Certificate, error) {
	path := source
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("reading trust anchors from %s: %w", path, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("reading trust anchors from %s: %q is not a CA certificate", path, c.Subject)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("reading trust anchors: %s holds no PEM CERTIFICATE (want the controller's ca.crt)", path)
	}
	return certs, nil
}

// Pool returns certs as a certificate pool.
func Pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// Fingerprint is the SHA-256 of a certificate's DER, in hex: what `openssl x509 -fingerprint
// -sha256` prints, without the colons; /debug/identity names trust anchors and issuers by it.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// ClientTLS returns the TLS configuration for dialling a server that must present a certificate
// for server chaining to roots (the controller: its own identity and the trust anchor file). It
// replaces host-name verification by VerifyPeer and a SPIFFE ID check, because mesh certificates
// carry no DNS names; the chain is still fully verified (InsecureSkipVerify only turns off the
// host-name path).
func ClientTLS(roots *x509.CertPool, server spiffeid.ID, now func() time.Time) *tls.Config {
	if now == nil {
		now = time.Now
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified in VerifyConnection, against roots and the SPIFFE ID
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := VerifyPeer(cs.PeerCertificates, roots, x509.ExtKeyUsageServerAuth, server.TrustDomain(), now())
			if err != nil {
				return err
			}
			if id != server {
				return fmt.Errorf("server is %s, want %s", id, server)
			}
			return nil
		},
	}
}

// ControllerID is the identity the controller's gRPC port presents in trust domain td. Proxies
// accept no other certificate from the controller.
func ControllerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, _ := spiffeid.FromSegments(td, "ns", "detour", "sa", "controller") // constant, valid segments
	return id
}

// TrustDomainOf returns the trust domain a Detour trust anchor names in its URI SAN
// (spiffe://<trust-domain>, as `detour controller ca init` writes it), so a proxy given only
// --trust-anchor knows which controller identity to expect.
func TrustDomainOf(anchor *x509.Certificate) (spiffeid.TrustDomain, error) {
	if len(anchor.URIs) != 1 {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust anchor %q names no trust domain (want one URI SAN spiffe://<trust-domain>)", anchor.Subject)
	}
	return spiffeid.TrustDomainFromURI(anchor.URIs[0])
}
