package discovery

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultTrustDomain is the trust domain of a discovery file that does not name one.
const DefaultTrustDomain TrustDomain = "cluster.local"

// TrustDomain is a SPIFFE trust domain name, e.g. "cluster.local": the root of every workload
// identity the mesh issues and accepts.
type TrustDomain string

// ParseTrustDomain validates a trust domain name (SPIFFE-ID §2.1: lower-case letters, digits,
// dots, dashes and underscores).
func ParseTrustDomain(s string) (TrustDomain, error) {
	if s == "" {
		return "", errors.New("trust domain is empty")
	}
	if len(s) > 255 {
		return "", errors.New("trust domain is longer than 255 bytes")
	}
	for i := 0; i < len(s); i++ {
		if !isTrustDomainChar(s[i]) {
			return "", fmt.Errorf("trust domain %q: character %q is not allowed (use lower-case letters, digits, '.', '-', '_')", s, s[i])
		}
	}
	return TrustDomain(s), nil
}

// ID returns the workload identity of a Kubernetes service account in the trust domain
// (shared/DESIGN.md "Identity").
func (td TrustDomain) ID(namespace, serviceAccount string) string {
	return "spiffe://" + string(td) + "/ns/" + namespace + "/sa/" + serviceAccount
}

// CheckID validates id as a SPIFFE ID (SPIFFE-ID §2) that belongs to the trust domain.
func (td TrustDomain) CheckID(id string) error {
	const scheme = "spiffe://"
	if !strings.HasPrefix(id, scheme) {
		return fmt.Errorf("%q is not a SPIFFE ID: want spiffe://%s/<path>", id, td)
	}
	if len(id) > 2048 {
		return errors.New("SPIFFE ID is longer than 2048 bytes")
	}
	rest := id[len(scheme):]
	domain, path, _ := strings.Cut(rest, "/")
	if _, err := ParseTrustDomain(domain); err != nil {
		return fmt.Errorf("%q: %w", id, err)
	}
	if domain != string(td) {
		return fmt.Errorf("%q is in trust domain %q, not %q", id, domain, td)
	}
	if path == "" {
		return fmt.Errorf("%q names a trust domain, not a workload: want spiffe://%s/ns/<namespace>/sa/<serviceaccount>", id, td)
	}
	for seg := range strings.SplitSeq(path, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%q has an empty path segment", id)
		case ".", "..":
			return fmt.Errorf("%q has a relative path segment %q", id, seg)
		}
		for i := 0; i < len(seg); i++ {
			if !isPathChar(seg[i]) {
				return fmt.Errorf("%q: character %q is not allowed in a SPIFFE ID path (use letters, digits, '.', '-', '_')", id, seg[i])
			}
		}
	}
	return nil
}

func isTrustDomainChar(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_'
}

func isPathChar(c byte) bool {
	return isTrustDomainChar(c) || 'A' <= c && c <= 'Z'
}
