package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	"github.com/detourmesh/detour/api/identitypb"
	"github.com/detourmesh/detour/spiffe"
)

// Clock is the client's time source. Tests substitute one to control renewal; the default is the
// real clock.
type Clock interface {
	Now() time.Time
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// ClientConfig configures a Client. Controller, TrustAnchors, ID and TokenFile are required.
type ClientConfig struct {
	// Controller is the controller's gRPC address, host:port.
	Controller string
	// TrustAnchors is a PEM file of the trust anchors (the controller CA's ca.crt). It verifies
	// the controller's TLS certificate; the anchors the controller returns with each certificate
	// then verify peers.
	TrustAnchors string
	// TrustAnchorCerts, when set, are the trust anchors already read from TrustAnchors (by
	// LoadTrustAnchors), so the client does not read the file again and trusts exactly what
	// the caller does.
	TrustAnchorCerts []*x509.Certificate
	// ControllerID is the identity the controller must present; zero means ControllerID of ID's
	// trust domain.
	ControllerID spiffeid.ID
	// ID is the workload identity to ask for.
	ID spiffeid.ID
	// TokenFile holds the proof of identity (a bootstrap token, or a projected ServiceAccount
	// token). It is read again before every request, so a rotated token is picked up; it is never
	// logged.
	TokenFile string
	// RenewFraction is the part of a certificate's life after which it is renewed; default 0.7.
	RenewFraction float64
	// MinBackoff and MaxBackoff bound the wait between failed requests; default 1 s and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one Certify call; default 10 s.
	RequestTimeout time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Clock; default the real clock.
	Clock Clock
}

// Client is the proxy's Source of identity: it gets a certificate from the controller's Identity
// service and keeps it fresh. Run does the work; the Source methods, Ready and Status may be
// called from any goroutine at any time and never block.
type Client struct {
	cfg   ClientConfig
	held  atomic.Pointer[held]
	boot  atomic.Pointer[x509.CertPool] // the trust anchor file, once read
	empty *x509.CertPool

	mu        sync.Mutex // guards the fields below, for Status
	lastErr   string
	lastErrAt time.Time
	renewals  int
}

// held is one issued certificate and what goes with it; replaced whole on renewal.
type held struct {
	cert     *tls.Certificate
	leaf     *x509.Certificate
	anchors  []*x509.Certificate
	roots    *x509.CertPool
	obtained time.Time
	renewAt  time.Time
}

var _ Source = (*Client)(nil)

// NewClient returns a client for cfg. It does no I/O: Run validates cfg and starts the work.
func NewClient(cfg ClientConfig) *Client {
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		cfg.RenewFraction = 0.7
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.ControllerID.IsZero() && !cfg.ID.IsZero() {
		cfg.ControllerID = spiffe.ControllerID(cfg.ID.TrustDomain())
	}
	return &Client{cfg: cfg, empty: x509.NewCertPool()}
}

// Run gets the first certificate, then renews it with a new key each time RenewFraction of its
// life has passed, until ctx is done. When the controller cannot be reached or refuses, it
// retries with exponential backoff and keeps serving the certificate it holds while that is
// valid. It returns an error only for a configuration that can never work (a missing trust
// anchor file, no identity), and nil when ctx is done.
func (c *Client) Run(ctx context.Context) error {
	cfg := c.cfg
	switch {
	case cfg.ID.IsZero():
		return errors.New("identity client: no identity to ask for")
	case cfg.Controller == "":
		return errors.New("identity client: no controller address")
	case cfg.TokenFile == "":
		return errors.New("identity client: no token file")
	}
	anchors := cfg.TrustAnchorCerts
	if len(anchors) == 0 {
		var err error
		if anchors, err = spiffe.LoadTrustAnchors(cfg.TrustAnchors); err != nil {
			return fmt.Errorf("identity client: %w", err)
		}
	}
	boot := spiffe.Pool(anchors)
	c.boot.Store(boot)
	conn, err := grpc.NewClient(cfg.Controller,
		grpc.WithTransportCredentials(credentials.NewTLS(spiffe.ClientTLS(boot, cfg.ControllerID, cfg.Clock.Now))),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: cfg.MinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: cfg.MaxBackoff},
			MinConnectTimeout: cfg.RequestTimeout,
		}))
	if err != nil {
		return fmt.Errorf("identity client: controller %q: %w", cfg.Controller, err)
	}
	defer conn.Close()
	rpc := identitypb.NewIdentityClient(conn)

	delay := time.Duration(0)
	for {
		var wait time.Duration
		h := c.held.Load()
		now := cfg.Clock.Now()
		if h == nil || !now.Before(h.renewAt) {
			if err := c.certify(ctx, rpc, boot, anchors); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				c.fail(err, h)
				delay = nextBackoff(delay, cfg.MinBackoff, cfg.MaxBackoff)
				wait = delay
			} else {
				delay = 0
				continue
			}
		} else {
			wait = h.renewAt.Sub(now)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-cfg.Clock.After(wait):
		}
	}
}

// nextBackoff doubles the previous delay within [lo, hi], with ±20 % jitter so proxies that
// lost the controller together do not return together.
func nextBackoff(prev, lo, hi time.Duration) time.Duration {
	d := min(max(prev*2, lo), hi)
	return time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
}

func (c *Client) certify(ctx context.Context, rpc identitypb.IdentityClient, boot *x509.CertPool, bootAnchors []*x509.Certificate) error {
	cfg := c.cfg
	token, err := os.ReadFile(cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("reading the identity token: %w", err)
	}
	tok := strings.TrimSpace(string(token))
	if tok == "" {
		return fmt.Errorf("the identity token file %s is empty", cfg.TokenFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{cfg.ID.URL()}}, key)
	if err != nil {
		return fmt.Errorf("creating certificate request: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
	defer cancel()
	resp, err := rpc.Certify(rctx, &identitypb.CertifyRequest{Identity: cfg.ID.String(), Csr: csr, Token: tok})
	if err != nil {
		return fmt.Errorf("asking controller %s for a certificate for %s: %w", cfg.Controller, cfg.ID, err)
	}
	now := cfg.Clock.Now()
	h, err := c.check(resp, key, boot, bootAnchors, now)
	if err != nil {
		return fmt.Errorf("controller %s returned an unusable certificate: %w", cfg.Controller, err)
	}
	prev := c.held.Swap(h)
	c.mu.Lock()
	c.lastErr, c.lastErrAt = "", time.Time{}
	if prev != nil {
		c.renewals++
	}
	c.mu.Unlock()
	cfg.Logger.Info("workload certificate issued", "id", cfg.ID.String(), "serial", h.leaf.SerialNumber.Text(16),
		"not_after", h.leaf.NotAfter.UTC().Format(time.RFC3339), "renew_at", h.renewAt.UTC().Format(time.RFC3339))
	return nil
}

// check verifies a Certify response before it replaces the certificate in force: the
// certificate is for our key and our identity, and chains to the trust anchors.
func (c *Client) check(resp *identitypb.CertifyResponse, key *ecdsa.PrivateKey, boot *x509.CertPool, bootAnchors []*x509.Certificate, now time.Time) (*held, error) {
	leaf, err := x509.ParseCertificate(resp.GetCertificate())
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("the certificate is not for the key we sent")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != c.cfg.ID.String() {
		return nil, fmt.Errorf("the certificate is not for %s alone (URI SANs %v)", c.cfg.ID, leaf.URIs)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return nil, errors.New("the certificate is not for both client and server use")
	}
	anchors, roots := bootAnchors, boot
	if len(resp.GetTrustAnchors()) > 0 {
		anchors = nil
		for _, raw := range resp.GetTrustAnchors() {
			a, err := x509.ParseCertificate(raw)
			if err != nil {
				return nil, fmt.Errorf("trust anchor: %w", err)
			}
			anchors = append(anchors, a)
		}
		roots = spiffe.Pool(anchors)
	}
	chain := append([][]byte{leaf.Raw}, resp.GetIntermediates()...)
	if _, err := spiffe.VerifyRawPeer(chain, roots, x509.ExtKeyUsageServerAuth, c.cfg.ID.TrustDomain(), now); err != nil {
		return nil, err
	}
	life := leaf.NotAfter.Sub(now)
	// Renewal is timed from when the certificate arrived, not from its NotBefore, which the CA
	// puts in the past for clock skew: a short-lived certificate must not look half used already.
	return &held{
		cert:     &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf},
		leaf:     leaf,
		anchors:  anchors,
		roots:    roots,
		obtained: now,
		renewAt:  now.Add(time.Duration(float64(life) * c.cfg.RenewFraction)),
	}, nil
}

// fail records a failed request and logs it when it differs from the last one, so a controller
// that is away for an hour does not fill the log.
func (c *Client) fail(err error, h *held) {
	msg := err.Error()
	c.mu.Lock()
	repeat := msg == c.lastErr
	c.lastErr, c.lastErrAt = msg, c.cfg.Clock.Now()
	c.mu.Unlock()
	if repeat {
		return
	}
	log := c.cfg.Logger
	switch {
	case h == nil:
		log.Warn("no workload certificate yet; retrying", "id", c.cfg.ID.String(), "err", msg)
	case c.cfg.Clock.Now().Before(h.leaf.NotAfter):
		log.Warn("workload certificate renewal failed; serving the current one while it is valid",
			"id", c.cfg.ID.String(), "not_after", h.leaf.NotAfter.UTC().Format(time.RFC3339), "err", msg)
	default:
		log.Error("workload certificate expired and renewal fails", "id", c.cfg.ID.String(), "err", msg)
	}
}

// ID implements Source.
func (c *Client) ID() spiffeid.ID { return c.cfg.ID }

// Certificate implements Source: the newest certificate while it is valid.
func (c *Client) Certificate() (*tls.Certificate, error) {
	h := c.held.Load()
	if h == nil {
		return nil, fmt.Errorf("no workload certificate for %s yet%s", c.cfg.ID, c.lastErrSuffix())
	}
	if !c.cfg.Clock.Now().Before(h.leaf.NotAfter) {
		return nil, fmt.Errorf("the workload certificate for %s expired at %s%s", c.cfg.ID,
			h.leaf.NotAfter.UTC().Format(time.RFC3339), c.lastErrSuffix())
	}
	return h.cert, nil
}

func (c *Client) lastErrSuffix() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastErr == "" {
		return ""
	}
	return " (last attempt: " + c.lastErr + ")"
}

// Roots implements Source: the trust anchors the controller returned with the certificate, or
// the trust anchor file's until then (an empty pool before Run has read it).
func (c *Client) Roots() *x509.CertPool {
	if h := c.held.Load(); h != nil {
		return h.roots
	}
	if b := c.boot.Load(); b != nil {
		return b
	}
	return c.empty
}

// Ready reports whether the client holds a valid certificate; the proxy is not ready before.
func (c *Client) Ready() bool {
	h := c.held.Load()
	return h != nil && c.cfg.Clock.Now().Before(h.leaf.NotAfter)
}

// Status is the /debug/identity document.
type Status struct {
	ID           string    `json:"id"`
	Ready        bool      `json:"ready"`
	Serial       string    `json:"serial,omitempty"`        // hex
	Issuer       string    `json:"issuer_sha256,omitempty"` // the intermediate that signed it
	NotBefore    time.Time `json:"not_before,omitzero"`
	NotAfter     time.Time `json:"not_after,omitzero"`
	RenewAt      time.Time `json:"renew_at,omitzero"`
	Renewals     int       `json:"renewals"`
	TrustAnchors []string  `json:"trust_anchors"` // SHA-256 fingerprints, hex
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
}

// Status reports the certificate in force and the last renewal error, if the last attempt failed.
func (c *Client) Status() Status {
	s := Status{ID: c.cfg.ID.String(), Ready: c.Ready(), TrustAnchors: []string{}}
	if h := c.held.Load(); h != nil {
		s.Serial = h.leaf.SerialNumber.Text(16)
		if chain := h.cert.Certificate; len(chain) > 1 {
			s.Issuer = spiffe.Fingerprint(chain[1])
		}
		s.NotBefore, s.NotAfter, s.RenewAt = h.leaf.NotBefore.UTC(), h.leaf.NotAfter.UTC(), h.renewAt.UTC()
		for _, a := range h.anchors {
			s.TrustAnchors = append(s.TrustAnchors, spiffe.Fingerprint(a.Raw))
		}
	}
	c.mu.Lock()
	s.LastError, s.LastErrorAt, s.Renewals = c.lastErr, c.lastErrAt, c.renewals
	c.mu.Unlock()
	return s
}
