package spiffe

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Bounds on the chain a peer presents. A mesh SVID chain is a leaf and at most an intermediate
// or two; anything much larger is a misconfiguration or an attempt to make verification expensive.
const (
	// MaxChainCerts is the most certificates a peer may present.
	MaxChainCerts = 4
	// MaxChainBytes is the most DER bytes a peer's certificates may add up to.
	MaxChainBytes = 64 << 10
)

// VerifyPeer checks the chain a peer presented (leaf first) and returns the SPIFFE ID it proves:
// at most MaxChainCerts certificates and MaxChainBytes; a leaf that is an X509-SVID (exactly one
// URI SAN, a SPIFFE ID with a path; not a CA, may not sign certificates) in trust domain td;
// extended key usage eku named explicitly (crypto/x509 lets a leaf without the extension pass for
// any usage; an SVID must say what it is for); a chain to roots at now.
//
// The chain is verified with crypto/x509 rather than x509svid.Verify because callers hold a
// CertPool, not the bundle's certificates, and x509svid.Verify accepts any key usage. The SVID
// rules themselves come from go-spiffe (x509svid.IDFromCert, spiffeid).
func VerifyPeer(certs []*x509.Certificate, roots *x509.CertPool, eku x509.ExtKeyUsage, td spiffeid.TrustDomain, now time.Time) (spiffeid.ID, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, errors.New("no certificate presented")
	}
	if len(certs) > MaxChainCerts {
		return spiffeid.ID{}, fmt.Errorf("chain of %d certificates, more than %d", len(certs), MaxChainCerts)
	}
	size := 0
	for _, c := range certs {
		size += len(c.Raw)
	}
	if size > MaxChainBytes {
		return spiffeid.ID{}, fmt.Errorf("chain of %d bytes, more than %d", size, MaxChainBytes)
	}
	leaf := certs[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		if len(leaf.DNSNames) > 0 {
			return spiffeid.ID{}, fmt.Errorf("certificate has no SPIFFE ID (%v), only DNS names %q, which are no workload identity", err, leaf.DNSNames)
		}
		return spiffeid.ID{}, fmt.Errorf("certificate has no SPIFFE ID: %w", err)
	}
	switch {
	case leaf.IsCA:
		return id, fmt.Errorf("%s: leaf certificate is a CA", id)
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return id, fmt.Errorf("%s: leaf certificate may sign certificates or CRLs", id)
	case !id.MemberOf(td):
		return id, fmt.Errorf("%s is in trust domain %q, not %q", id, id.TrustDomain(), td)
	case id.Path() == "":
		return id, fmt.Errorf("%s names a trust domain, not a workload", id)
	case !slices.Contains(leaf.ExtKeyUsage, eku):
		return id, fmt.Errorf("%s: certificate lacks extended key usage %s", id, ekuName(eku))
	case roots == nil:
		return id, fmt.Errorf("%s: no trust anchors to verify it against", id)
	}
	var inter *x509.CertPool
	if len(certs) > 1 {
		inter = x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{eku},
		CurrentTime:   now,
	})
	if err != nil {
		return id, fmt.Errorf("%s does not chain to the trust anchors: %w", id, err)
	}
	return id, nil
}

// VerifyRawPeer is VerifyPeer for a chain in DER, as gRPC's TLS info and crypto/tls's
// VerifyPeerCertificate hand it over. The bounds are checked before anything is parsed.
func VerifyRawPeer(raw [][]byte, roots *x509.CertPool, eku x509.ExtKeyUsage, td spiffeid.TrustDomain, now time.Time) (spiffeid.ID, error) {
	if len(raw) > MaxChainCerts {
		return spiffeid.ID{}, fmt.Errorf("chain of %d certificates, more than %d", len(raw), MaxChainCerts)
	}
	size := 0
	for _, der := range raw {
		size += len(der)
	}
	if size > MaxChainBytes {
		return spiffeid.ID{}, fmt.Errorf("chain of %d bytes, more than %d", size, MaxChainBytes)
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("certificate %d of the chain: %w", i, err)
		}
		certs[i] = c
	}
	return VerifyPeer(certs, roots, eku, td, now)
}

func ekuName(eku x509.ExtKeyUsage) string {
	switch eku {
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	}
	return fmt.Sprintf("%d", eku)
}
