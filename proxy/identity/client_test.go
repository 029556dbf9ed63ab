package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/detourmesh/detour/api/identitypb"
	"github.com/detourmesh/detour/controller/ca"
	cidentity "github.com/detourmesh/detour/controller/identity"
	"github.com/detourmesh/detour/proxy/identity"
	"github.com/detourmesh/detour/spiffe"
)

const stockdataToken = "3f1c9a0e5b7d42c8a16e0f9b2d4c7a51"

var (
	td        = spiffeid.RequireTrustDomainFromString("cluster.local")
	stockdata = spiffeid.RequireFromString("spiffe://cluster.local/ns/stocks/sa/stockdata")
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// controller is the controller's Identity service on a loopback TLS port that a test can stop
// and start again on the same address.
type controller struct {
	t      *testing.T
	ca     *ca.CA
	anchor string // path of ca.crt
	tokens string // path of a token file for stockdata
	ttl    time.Duration
	addr   string

	mu sync.Mutex
	gs *grpc.Server
}

func startController(t *testing.T, ttl time.Duration) *controller {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(filepath.Join(dir, "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	k := &controller{t: t, ca: c, anchor: filepath.Join(dir, "ca", ca.AnchorCertFile), ttl: ttl, addr: "127.0.0.1:0"}
	k.tokens = filepath.Join(dir, "token")
	// The proxy's token file holds only the token; the controller's maps it to the identity.
	if err := os.WriteFile(k.tokens, []byte(stockdataToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k.start()
	t.Cleanup(k.stop)
	return k
}

func (k *controller) start() {
	k.t.Helper()
	tokens, err := cidentity.ParseTokens([]byte(stockdataToken+" "+stockdata.String()+"\n"), td)
	if err != nil {
		k.t.Fatal(err)
	}
	tlsCfg, err := k.ca.ServerTLS(spiffe.ControllerID(td), time.Hour)
	if err != nil {
		k.t.Fatal(err)
	}
	lis, err := net.Listen("tcp", k.addr)
	if err != nil {
		k.t.Fatal(err)
	}
	k.addr = lis.Addr().String()
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	identitypb.RegisterIdentityServer(gs, cidentity.NewServer(cidentity.Config{CA: k.ca, Verifier: tokens, TTL: k.ttl, Logger: quiet()}))
	go gs.Serve(lis)
	k.mu.Lock()
	k.gs = gs
	k.mu.Unlock()
}

func (k *controller) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gs != nil {
		k.gs.Stop()
		k.gs = nil
	}
}

func (k *controller) config() identity.ClientConfig {
	return identity.ClientConfig{
		Controller: k.addr, TrustAnchors: k.anchor, ID: stockdata, TokenFile: k.tokens,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: quiet(),
	}
}

// run runs the client until the test ends.
func run(t *testing.T, c *identity.Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// eventually polls cond every few milliseconds. The limit only bounds a failing test.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func serial(t *testing.T, c *identity.Client) string {
	t.Helper()
	cert, err := c.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return cert.Leaf.SerialNumber.String()
}

func TestClientIsNotReadyBeforeItsFirstCertificate(t *testing.T) {
	k := startController(t, time.Hour)
	k.stop()
	c := identity.NewClient(k.config())
	if c.Ready() {
		t.Fatal("ready before Run")
	}
	if _, err := c.Certificate(); err == nil {
		t.Fatal("a certificate before Run")
	}
	run(t, c)
	eventually(t, "the first attempt fails", func() bool { return c.Status().LastError != "" })
	if c.Ready() {
		t.Fatal("ready with no controller")
	}
	_, err := c.Certificate()
	if err == nil || !strings.Contains(err.Error(), "no workload certificate for "+stockdata.String()+" yet") {
		t.Fatalf("Certificate() error = %v", err)
	}
	k.start()
	eventually(t, "ready once the controller is up", c.Ready)
	cert, err := c.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.URIs[0].String() != stockdata.String() || c.ID() != stockdata {
		t.Errorf("certificate for %v, client says %s", cert.Leaf.URIs, c.ID())
	}
	if !c.Roots().Equal(spiffe.Pool([]*x509.Certificate{k.ca.TrustAnchor()})) {
		t.Errorf("Roots is not the trust anchor")
	}
}

func TestClientRenewsBeforeExpiryWithoutAGap(t *testing.T) {
	k := startController(t, 3*time.Second)
	c := identity.NewClient(k.config())
	run(t, c)
	eventually(t, "ready", c.Ready)
	first, err := c.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	// Ask as a TLS handshake would, continuously, across the renewal: never an error.
	renewed := first
	eventually(t, "the certificate is renewed", func() bool {
		cert, err := c.Certificate()
		if err != nil {
			t.Fatalf("no certificate during renewal: %v", err)
		}
		renewed = cert
		return cert.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0
	})
	if !time.Now().Before(first.Leaf.NotAfter) {
		t.Errorf("renewed only after the old certificate expired at %s", first.Leaf.NotAfter)
	}
	if renewed.PrivateKey.(*ecdsa.PrivateKey).Equal(first.PrivateKey) {
		t.Errorf("renewal kept the old key")
	}
	if !renewed.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Errorf("renewed certificate expires at %s, not after the old one's %s", renewed.Leaf.NotAfter, first.Leaf.NotAfter)
	}
	if st := c.Status(); st.Renewals < 1 || st.LastError != "" || st.Issuer != spiffe.Fingerprint(k.ca.Issuer().Raw) {
		t.Errorf("status after renewal: %+v (want issuer %s)", st, spiffe.Fingerprint(k.ca.Issuer().Raw))
	}
}

func TestClientSurvivesAControllerRestart(t *testing.T) {
	k := startController(t, 6*time.Second)
	c := identity.NewClient(k.config())
	run(t, c)
	eventually(t, "ready", c.Ready)
	first, _ := c.Certificate()
	k.stop()
	// At 70 % of its life the client tries to renew, fails, and keeps the certificate it has.
	eventually(t, "a renewal fails", func() bool { return c.Status().LastError != "" })
	if time.Now().Before(first.Leaf.NotAfter) {
		cert, err := c.Certificate()
		if err != nil || cert != first {
			t.Fatalf("while the controller is away and the certificate valid: %v, %v", cert, err)
		}
		if !c.Ready() {
			t.Errorf("not ready while holding a valid certificate")
		}
	}
	k.start()
	eventually(t, "a new certificate after the restart", func() bool {
		cert, err := c.Certificate()
		return err == nil && cert.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0
	})
	if st := c.Status(); st.LastError != "" || !st.Ready {
		t.Errorf("status after recovery: %+v", st)
	}
}

func TestClientWithAWrongTokenGetsNothing(t *testing.T) {
	k := startController(t, time.Hour)
	cfg := k.config()
	cfg.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(cfg.TokenFile, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := identity.NewClient(cfg)
	run(t, c)
	eventually(t, "the controller refuses", func() bool { return strings.Contains(c.Status().LastError, "PermissionDenied") })
	if c.Ready() {
		t.Fatal("ready with a refused token")
	}
	if _, err := c.Certificate(); err == nil || !strings.Contains(err.Error(), "does not prove identity") {
		t.Fatalf("Certificate() error = %v, want the controller's reason", err)
	}
	if strings.Contains(c.Status().LastError, "0123456789abcdef") {
		t.Errorf("the status reveals the token")
	}
}

func TestClientRunRefusesAConfigurationThatCannotWork(t *testing.T) {
	k := startController(t, time.Hour)
	tests := []struct {
		name    string
		change  func(*identity.ClientConfig)
		wantErr string
	}{
		{"a missing trust anchor file", func(c *identity.ClientConfig) { c.TrustAnchors = filepath.Join(t.TempDir(), "nope.crt") }, "reading trust anchors"},
		{"a trust anchor file that is not PEM", func(c *identity.ClientConfig) { c.TrustAnchors = k.tokens }, "holds no PEM CERTIFICATE"},
		{"no identity", func(c *identity.ClientConfig) { c.ID = spiffeid.ID{} }, "no identity"},
		{"no token file", func(c *identity.ClientConfig) { c.TokenFile = "" }, "no token file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := k.config()
			tt.change(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			t.Cleanup(cancel)
			err := identity.NewClient(cfg).Run(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Run: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestClientStatusIsTheDebugIdentityDocument(t *testing.T) {
	k := startController(t, time.Hour)
	c := identity.NewClient(k.config())
	run(t, c)
	eventually(t, "ready", c.Ready)
	data, err := json.Marshal(c.Status())
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"id", "ready", "serial", "not_before", "not_after", "renew_at", "trust_anchors"} {
		if _, ok := doc[key]; !ok {
			t.Errorf("/debug/identity lacks %q: %s", key, data)
		}
	}
	if _, ok := doc["last_error"]; ok {
		t.Errorf("last_error present with no error: %s", data)
	}
	anchors, _ := doc["trust_anchors"].([]any)
	if len(anchors) != 1 || anchors[0] != spiffe.Fingerprint(k.ca.TrustAnchor().Raw) {
		t.Errorf("trust_anchors = %v, want the CA's fingerprint", doc["trust_anchors"])
	}
}

// fakeClock is a Clock the test moves by hand; After fires when Advance passes its deadline.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	f.waiters = append(f.waiters, fakeWaiter{at: f.now.Add(d), ch: ch})
	return ch
}

// Advance moves the clock and fires the timers that are due.
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if w.at.After(f.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- f.now
	}
	f.waiters = kept
}

func TestClientRenewsAt70PercentAndNeverServesAnExpiredCertificate(t *testing.T) {
	k := startController(t, time.Hour)
	clock := &fakeClock{now: time.Now()}
	cfg := k.config()
	cfg.Clock = clock
	c := identity.NewClient(cfg)
	run(t, c)
	eventually(t, "ready", c.Ready)
	first := serial(t, c)
	clock.Advance(40 * time.Minute) // 67 %: not yet
	if got := serial(t, c); got != first {
		t.Fatalf("renewed before 70 %% of the certificate's life")
	}
	clock.Advance(3 * time.Minute) // 72 %
	eventually(t, "renewed after 70 %", func() bool { return serial(t, c) != first })

	// The CA keeps real time, so the renewed certificate also expires an hour after the test
	// began (at fake minute 60), and is renewed at 70 % of the 17 minutes it had left (~55).
	k.stop()
	second, _ := c.Certificate()
	clock.Advance(13 * time.Minute) // minute 56: renewal fails, the certificate is still valid
	eventually(t, "a renewal fails", func() bool { return c.Status().LastError != "" })
	if cert, err := c.Certificate(); err != nil || cert != second {
		t.Fatalf("the valid certificate was not kept: %v", err)
	}
	clock.Advance(5 * time.Minute) // minute 61: past NotAfter
	if c.Ready() {
		t.Errorf("ready with an expired certificate")
	}
	if _, err := c.Certificate(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Certificate() after expiry: %v", err)
	}
}

func TestClientUsesTrustAnchorsAlreadyRead(t *testing.T) {
	k := startController(t, time.Hour)
	cfg := k.config()
	cfg.TrustAnchorCerts = []*x509.Certificate{k.ca.TrustAnchor()}
	cfg.TrustAnchors = filepath.Join(t.TempDir(), "gone.crt") // never read
	c := identity.NewClient(cfg)
	run(t, c)
	eventually(t, "ready", c.Ready)
}
