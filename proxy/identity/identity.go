// Package identity keeps a proxy's workload identity: an ECDSA P-256 key made in memory that
// never leaves the process, a short-lived certificate for it issued by the controller's CA, and
// the trust anchors that peers' certificates must chain to. Mutual TLS between proxies reads
// everything it needs through Source.
package identity

import (
	"crypto/tls"
	"crypto/x509"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Source is the identity TLS uses. Its methods are called from TLS handshakes on any goroutine,
// concurrently; they never block, and return the newest certificate, so a renewal takes effect
// on the next handshake without dropping connections.
type Source interface {
	// ID is the workload's SPIFFE ID.
	ID() spiffeid.ID
	// Certificate returns the current certificate chain and private key, for
	// tls.Config.GetCertificate and GetClientCertificate. It fails until the first certificate
	// has been issued.
	Certificate() (*tls.Certificate, error)
	// Roots returns the trust anchors of the trust domain.
	Roots() *x509.CertPool
}
