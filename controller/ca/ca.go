// Package ca is the certificate authority of one trust domain: it exists so that every workload
// certificate in the mesh chains to one trust anchor the proxies are given out of band, and so
// that the rules of what a workload certificate may say (one SPIFFE ID as its only URI SAN, an
// ECDSA P-256 key, client and server use, a short life) live in one place that tests can call.
//
// The CA has two levels. The trust anchor (ca.crt, ca.key) is self-signed and only signs the
// issuer; its key can be taken offline once the issuer exists, and brought back to rotate the
// issuer (RotateIssuer). The issuer (issuer.crt, issuer.key) signs workload certificates and is
// sent to proxies as their one intermediate. Rotating the issuer therefore never changes what
// proxies trust.
//
// The CA never sees a workload's private key: it signs certificate signing requests, and takes
// nothing from them but the public key. The identity written into the certificate is the one the
// caller proved (controller/identity), never one the CSR names.
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/spiffe"
)

// Files of a CA directory.
const (
	AnchorCertFile = "ca.crt"
	AnchorKeyFile  = "ca.key"
	IssuerCertFile = "issuer.crt"
	IssuerKeyFile  = "issuer.key"
)

// Lifetimes of the CA's own certificates. The issuer expires well before the anchor so a new
// issuer can be made under the same anchor; a workload certificate never outlives its issuer.
const (
	AnchorLifetime = 10 * 365 * 24 * time.Hour
	IssuerLifetime = 5 * 365 * 24 * time.Hour
)

// ClockSkew is how far in the past a certificate's NotBefore is put, so a peer whose clock is a
// little behind the CA's still accepts a certificate issued a moment ago.
const ClockSkew = time.Minute

// ErrInvalidCSR is wrapped by Sign's errors about the request itself (bad signature, wrong key
// type): the caller's fault, not the CA's.
var ErrInvalidCSR = errors.New("invalid certificate signing request")

// ErrForeignID is wrapped by Sign's error for an identity outside the CA's trust domain.
var ErrForeignID = errors.New("identity is not in the trust domain")

// CA signs workload certificates for one trust domain. It is safe for concurrent use.
type CA struct {
	td     spiffeid.TrustDomain
	anchor *x509.Certificate
	issuer atomic.Pointer[issuer] // swapped whole by ReloadIssuer
	now    func() time.Time
}

// issuer is the intermediate and its key, replaced together.
type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Init creates a new CA for td in dir (created 0700 if missing): a self-signed trust anchor and
// an issuer signed by it, each an ECDSA P-256 key. Keys are written 0600, certificates 0644. It
// refuses to touch a directory that already holds any of the four files, so running it twice
// can never replace the trust anchor every proxy was given.
func Init(dir string, td spiffeid.TrustDomain) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("creating CA: the trust domain is empty")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating CA directory: %w", err)
	}
	for _, name := range []string{AnchorCertFile, AnchorKeyFile, IssuerCertFile, IssuerKeyFile} {
		p := filepath.Join(dir, name)
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("creating CA in %s: %s already exists; a CA is never overwritten (use another --dir, or remove the old CA knowingly)", dir, p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("creating CA: %w", err)
		}
	}
	now := time.Now()
	anchorKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("creating CA: generating the trust anchor key: %w", err)
	}
	anchorTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"Detour"}, CommonName: "Detour trust anchor " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(AnchorLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	anchorDER, err := x509.CreateCertificate(rand.Reader, anchorTmpl, anchorTmpl, &anchorKey.PublicKey, anchorKey)
	if err != nil {
		return nil, fmt.Errorf("creating CA: signing the trust anchor: %w", err)
	}
	anchor, err := x509.ParseCertificate(anchorDER)
	if err != nil {
		return nil, fmt.Errorf("creating CA: %w", err)
	}
	issuerDER, issuerKey, err := newIssuer(td, anchor, anchorKey, now)
	if err != nil {
		return nil, fmt.Errorf("creating CA: %w", err)
	}
	err = writeFiles(dir, "", []caFile{
		{AnchorKeyFile, 0o600, keyPEM(anchorKey)},
		{AnchorCertFile, 0o644, certPEM(anchorDER)},
		{IssuerKeyFile, 0o600, keyPEM(issuerKey)},
		{IssuerCertFile, 0o644, certPEM(issuerDER)},
	})
	if err != nil {
		return nil, fmt.Errorf("creating CA: %w", err)
	}
	return Load(dir)
}

// newIssuer makes an issuer key and its certificate, signed by the trust anchor.
func newIssuer(td spiffeid.TrustDomain, anchor *x509.Certificate, anchorKey *ecdsa.PrivateKey, now time.Time) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating the issuer key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"Detour"}, CommonName: "Detour issuer " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(IssuerLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		// The issuer can only vouch for identities of its own trust domain, whatever a bug
		// elsewhere might ask it to sign: verifiers enforce this name constraint.
		PermittedURIDomains: []string{td.Name()},
	}
	if anchor.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = anchor.NotAfter // an issuer made late in the anchor's life ends with it
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, anchor, &key.PublicKey, anchorKey)
	if err != nil {
		return nil, nil, fmt.Errorf("signing the issuer: %w", err)
	}
	return der, key, nil
}

// RotateIssuer replaces the issuer in dir with a new key and certificate signed by the trust
// anchor, which needs the anchor's key (ca.key) back in dir. What proxies trust does not change:
// certificates of the old issuer stay valid until they expire (proxies present their issuer with
// them), and a controller running on dir signs with the new issuer within seconds
// (ReloadIssuer).
//
// Both new files are written and synced beside the old ones before either is renamed over its
// old one, so a failure before the renames leaves the old issuer whole. RotateIssuer reads only
// the trust anchor, so running it again completes a rotation interrupted between the renames.
// The new files keep the owner of the ones they replace (a controller running as another user
// must still read them).
func RotateIssuer(dir string) (*CA, error) {
	anchor, err := readCert(filepath.Join(dir, AnchorCertFile))
	if err != nil {
		return nil, fmt.Errorf("rotating the issuer: %w", err)
	}
	td, err := anchorTrustDomain(anchor)
	if err != nil {
		return nil, fmt.Errorf("rotating the issuer: %w", err)
	}
	anchorKey, err := readKey(filepath.Join(dir, AnchorKeyFile))
	if err != nil {
		return nil, fmt.Errorf("rotating the issuer needs the trust anchor's key: %w (bring it back from where it is kept offline)", err)
	}
	if !anchorKey.PublicKey.Equal(anchor.PublicKey) {
		return nil, fmt.Errorf("rotating the issuer: %s does not hold the key of %s", AnchorKeyFile, AnchorCertFile)
	}
	der, key, err := newIssuer(td, anchor, anchorKey, time.Now())
	if err != nil {
		return nil, fmt.Errorf("rotating the issuer: %w", err)
	}
	files := []caFile{{IssuerKeyFile, 0o600, keyPEM(key)}, {IssuerCertFile, 0o644, certPEM(der)}}
	if err := writeFiles(dir, newSuffix, files); err != nil {
		return nil, fmt.Errorf("rotating the issuer (the old issuer is unchanged): %w", err)
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("rotating the issuer: %w", err)
	}
	for _, f := range files {
		final := filepath.Join(dir, f.name)
		if err := os.Rename(final+newSuffix, final); err != nil {
			return nil, fmt.Errorf("rotating the issuer: %w (run it again to finish)", err)
		}
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("rotating the issuer: %w", err)
	}
	return Load(dir)
}

// caFile is one file of a CA directory.
type caFile struct {
	name string
	mode os.FileMode
	data []byte
}

// writeFiles writes each file as dir/name+suffix, which must not exist yet. With a suffix (a
// replacement to rename into place) a leftover of an interrupted rotation is replaced, and the
// file takes the owner of the one it will replace. On an error it removes what it wrote.
func writeFiles(dir, suffix string, files []caFile) error {
	var written []string
	for _, f := range files {
		final := filepath.Join(dir, f.name)
		p := final + suffix
		if suffix != "" {
			os.Remove(p)
		}
		err := writeNew(p, f.data, f.mode)
		if err == nil {
			written = append(written, p)
			if suffix != "" {
				err = sameOwner(p, final)
			}
		}
		if err != nil {
			for _, w := range written {
				os.Remove(w)
			}
			return err
		}
	}
	return nil
}

// sameOwner gives path the owner of like, if like exists.
func sameOwner(path, like string) error {
	st, err := os.Stat(like)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return os.Chown(path, int(sys.Uid), int(sys.Gid))
	}
	return nil
}

// syncDir makes the directory entries written in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// newSuffix names a file RotateIssuer writes before renaming it into place.
const newSuffix = ".new"

// writeNew writes a file that must not exist yet (O_EXCL), so a race with another Init loses
// instead of overwriting.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// Load reads the CA that Init wrote in dir. It checks that each key matches its certificate, that
// the issuer chains to the trust anchor, and takes the trust domain from the anchor's SPIFFE ID.
func Load(dir string) (*CA, error) {
	anchor, err := readCert(filepath.Join(dir, AnchorCertFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA: %w", err)
	}
	issuerCert, err := readCert(filepath.Join(dir, IssuerCertFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA: %w", err)
	}
	issuerKey, err := readKey(filepath.Join(dir, IssuerKeyFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA: %w", err)
	}
	if !issuerKey.PublicKey.Equal(issuerCert.PublicKey) {
		hint := ""
		if c, err := readCert(filepath.Join(dir, IssuerCertFile+newSuffix)); err == nil && issuerKey.PublicKey.Equal(c.PublicKey) {
			hint = fmt.Sprintf(" (an issuer rotation was interrupted: run detour controller ca rotate-issuer again, or rename %s to %s)", IssuerCertFile+newSuffix, IssuerCertFile)
		}
		return nil, fmt.Errorf("loading CA: %s does not hold the key of %s%s", IssuerKeyFile, IssuerCertFile, hint)
	}
	if !anchor.IsCA || !issuerCert.IsCA {
		return nil, fmt.Errorf("loading CA: %s and %s must both be CA certificates", AnchorCertFile, IssuerCertFile)
	}
	td, err := anchorTrustDomain(anchor)
	if err != nil {
		return nil, fmt.Errorf("loading CA: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	if _, err := issuerCert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("loading CA: %s is not signed by %s or is not valid now: %w", IssuerCertFile, AnchorCertFile, err)
	}
	c := &CA{td: td, anchor: anchor, now: time.Now}
	c.issuer.Store(&issuer{cert: issuerCert, key: issuerKey})
	return c, nil
}

// anchorTrustDomain is the trust domain a trust anchor names as its one URI SAN.
func anchorTrustDomain(anchor *x509.Certificate) (spiffeid.TrustDomain, error) {
	if len(anchor.URIs) != 1 {
		return spiffeid.TrustDomain{}, fmt.Errorf("%s must name its trust domain as its one URI SAN (spiffe://<trust-domain>)", AnchorCertFile)
	}
	td, err := spiffeid.TrustDomainFromURI(anchor.URIs[0])
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("%s: %w", AnchorCertFile, err)
	}
	return td, nil
}

// ReloadIssuer reads the issuer in dir again and signs with it from now on if it is another one
// that chains to this CA's trust anchor; changed says whether it did. A controller calls it
// periodically, so `detour controller ca rotate-issuer` (or a mounted secret updated) takes effect
// without a restart. An unreadable or foreign issuer is an error and the current one stays.
func (c *CA) ReloadIssuer(dir string) (changed bool, err error) {
	n, err := Load(dir)
	if err != nil {
		return false, err
	}
	if !n.anchor.Equal(c.anchor) {
		return false, fmt.Errorf("loading CA: %s in %s is another trust anchor than the one this controller serves; restart it to change anchors", AnchorCertFile, dir)
	}
	next := n.issuer.Load()
	if next.cert.Equal(c.issuer.Load().cert) {
		return false, nil
	}
	c.issuer.Store(next)
	return true, nil
}

// TrustDomain is the trust domain the CA issues for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// TrustAnchor is the self-signed root that proxies are given and verify every peer against.
func (c *CA) TrustAnchor() *x509.Certificate { return c.anchor }

// FollowIssuer calls ReloadIssuer every interval until ctx ends, so `ca rotate-issuer` (or a
// mounted secret that changes) takes effect without a restart. A rotation is logged; a failed
// reload keeps the current issuer and is logged once until it changes or succeeds.
func (c *CA) FollowIssuer(ctx context.Context, dir string, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := c.ReloadIssuer(dir)
		if err != nil {
			if err.Error() != lastErr {
				log.Warn("issuer not reloaded; signing with the current one", "err", err)
			} else {
				log.Debug("issuer still not reloaded", "err", err)
			}
			lastErr = err.Error()
			continue
		}
		lastErr = ""
		if changed {
			iss := c.Issuer()
			log.Info("issuer rotated: new certificates are signed by the new issuer",
				"issuer_sha256", spiffe.Fingerprint(iss.Raw), "not_after", iss.NotAfter.UTC())
		}
	}
}

// Issuer is the intermediate that signs workload certificates.
func (c *CA) Issuer() *x509.Certificate { return c.issuer.Load().cert }

// Sign issues a workload certificate for id to the public key of csr, valid from ClockSkew ago
// until now+ttl or the issuer's expiry, whichever is first. It returns the certificate and the
// chain a peer needs to reach the trust anchor: the intermediates, DER, leaf-most first, not
// including the leaf nor the anchor.
//
// The caller must already have proved that the requester is id; Sign takes nothing from the CSR
// but its key (its subject and SANs are ignored), after checking its signature, so the requester
// holds the private key. The key must be ECDSA P-256. The certificate has id as its only URI SAN,
// no DNS names, an empty subject (peers match on the URI SAN only), digitalSignature key usage
// and the serverAuth and clientAuth extended key usages.
func (c *CA) Sign(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) (*x509.Certificate, [][]byte, error) {
	if csr == nil {
		return nil, nil, fmt.Errorf("%w: none given", ErrInvalidCSR)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("%w: its signature does not verify: %v", ErrInvalidCSR, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("%w: the key must be ECDSA P-256, got %s", ErrInvalidCSR, keyType(csr.PublicKey))
	}
	if id.IsZero() || id.Path() == "" {
		return nil, nil, fmt.Errorf("identity %q is not a workload SPIFFE ID", id)
	}
	if !id.MemberOf(c.td) {
		return nil, nil, fmt.Errorf("%w: %s is not in %s", ErrForeignID, id, c.td)
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("certificate lifetime %s is not positive", ttl)
	}
	iss := c.issuer.Load()
	now := c.now()
	notAfter := now.Add(ttl)
	if notAfter.After(iss.cert.NotAfter) {
		notAfter = iss.cert.NotAfter
	}
	if !now.Before(notAfter) {
		return nil, nil, fmt.Errorf("the issuer expired at %s: make a new one with detour controller ca rotate-issuer", iss.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.cert, pub, iss.key)
	if err != nil {
		return nil, nil, fmt.Errorf("signing certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("signing certificate for %s: %w", id, err)
	}
	return leaf, [][]byte{iss.cert.Raw}, nil
}

func keyType(k crypto.PublicKey) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case nil:
		return "no key"
	default:
		return fmt.Sprintf("%T", k)
	}
}

// serialLimit: RFC 5280 §4.1.2.2 allows 20 octets; 128 random bits are unguessable and positive.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never zero
}

// mustSerial is randomSerial for Init, where crypto/rand cannot fail: since Go 1.24 a failing
// system random source crashes the program rather than returning an error.
func mustSerial() *big.Int {
	n, _ := randomSerial()
	return n
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(k *ecdsa.PrivateKey) []byte {
	der, _ := x509.MarshalPKCS8PrivateKey(k) // cannot fail for a P-256 key
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: no PEM PRIVATE KEY block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%s: want an ECDSA P-256 key", path)
	}
	return ek, nil
}
