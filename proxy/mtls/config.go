package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/detourmesh/detour/proxy/identity"
	"github.com/detourmesh/detour/spiffe"
)

// ClientConfig returns the TLS configuration an outbound proxy dials a meshed endpoint with:
// TLS 1.3 only, offering ALPN alpn, presenting src's current certificate, and accepting only a
// server that proves SPIFFE ID want (what discovery announced for the endpoint) with a
// serverAuth certificate chaining to src.Roots(). A server negotiating another protocol is
// refused too, so a completed handshake means the agreed protocol is alpn.
func ClientConfig(src identity.Source, want spiffeid.ID, alpn string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpn},
		// crypto/tls verifies host names; a SPIFFE ID is a URI SAN it does not look at.
		// VerifyConnection below does the whole verification instead.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.Certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			td := src.ID().TrustDomain()
			id, err := spiffe.VerifyPeer(cs.PeerCertificates, src.Roots(), x509.ExtKeyUsageServerAuth, td, time.Now())
			if err != nil {
				return fmt.Errorf("mtls: refusing server (discovery announced %s): %w", want, err)
			}
			if id != want {
				return fmt.Errorf("mtls: server presented %s, discovery announced %s", id, want)
			}
			if cs.NegotiatedProtocol != alpn {
				return fmt.Errorf("mtls: server %s negotiated ALPN %q, want %q", id, cs.NegotiatedProtocol, alpn)
			}
			return nil
		},
	}
}

// ServerConfig returns the TLS configuration an inbound proxy terminates mesh TLS with: TLS 1.3
// only, ALPN protocols alpn (a client offering none of them is refused), src's current
// certificate, and a required client certificate that must chain to src.Roots() with
// clientAuth usage and name a SPIFFE ID in src's trust domain. Which identities may call is
// Policy's business, with the ID PeerID returns.
//
// Session tickets are off: every connection makes a full handshake against the current trust
// anchors, which costs little because proxies keep their connections.
func ServerConfig(src identity.Source, alpn []string) *tls.Config {
	alpn = slices.Clone(alpn)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: alpn,
		// Any certificate is asked for; VerifyConnection verifies it as an SVID.
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return src.Certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			td := src.ID().TrustDomain()
			id, err := spiffe.VerifyPeer(cs.PeerCertificates, src.Roots(), x509.ExtKeyUsageClientAuth, td, time.Now())
			if err != nil {
				return fmt.Errorf("mtls: refusing client: %w", err)
			}
			if !slices.Contains(alpn, cs.NegotiatedProtocol) {
				return fmt.Errorf("mtls: client %s negotiated ALPN %q, want one of %q", id, cs.NegotiatedProtocol, alpn)
			}
			return nil
		},
	}
}

// PeerID returns the SPIFFE ID of the peer of a connection whose handshake completed with
// ClientConfig or ServerConfig, which verified it.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if !cs.HandshakeComplete {
		return spiffeid.ID{}, errors.New("mtls: handshake not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("mtls: peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: peer certificate: %w", err)
	}
	return id, nil
}
