package destination

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/controller/ca"
	cidentity "github.com/detourmesh/detour/controller/identity"
	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/internal/syncbuf"
	"github.com/detourmesh/detour/spiffe"
)

const (
	stockwebToken  = "9b2e41d07c3f5a8e6d1b0c4f7a2e9d36"
	stockdataToken = "3f1c9a0e5b7d42c8a16e0f9b2d4c7a51"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("cluster.local")
	stockweb  = spiffeid.RequireFromString("spiffe://cluster.local/ns/web/sa/stockweb")
	stockdata = spiffeid.RequireFromString("spiffe://cluster.local/ns/stocks/sa/stockdata")
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func fileWithVIP(vip string) string {
	return "services:\n  - name: stockdata.stocks\n    addresses: [\"" + vip + "\", \"stockdata.stocks:80\"]\n" +
		"    endpoints:\n      - address: 198.18.0.11:8080\n        identity: spiffe://cluster.local/ns/stocks/sa/stockdata\n" +
		"  - name: other.ns\n    addresses: [\"198.19.9.9:80\"]\n"
}

func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newCA(t *testing.T) *ca.CA {
	t.Helper()
	authority, err := ca.Init(filepath.Join(t.TempDir(), "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	return authority
}

// newServer is the Discovery service of src as the controller runs it: callers authenticated by
// authority's certificates or the stockweb and stockdata bootstrap tokens.
func newServer(t *testing.T, src discovery.Source, authority *ca.CA, log *slog.Logger) *Server {
	t.Helper()
	tokens, err := cidentity.ParseTokens([]byte(stockwebToken+" "+stockweb.String()+"\n"+stockdataToken+" "+stockdata.String()+"\n"), td)
	if err != nil {
		t.Fatal(err)
	}
	return NewServer(Config{Source: src, Auth: cidentity.NewAuthenticator(authority, tokens), Logger: log})
}

// serveTLS runs srv's Watch on a loopback TLS port with a controller certificate from authority
// and returns its address.
func serveTLS(t *testing.T, srv *Server, authority *ca.CA) string {
	t.Helper()
	tlsCfg, err := authority.ServerTLS(spiffe.ControllerID(td), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	discoverypb.RegisterDiscoveryServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// dial returns a client of addr that verifies the controller as a proxy does and presents cert
// (nil: none) as its client certificate.
func dial(t *testing.T, addr string, authority *ca.CA, cert *tls.Certificate) discoverypb.DiscoveryClient {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(authority.TrustAnchor())
	cfg := spiffe.ClientTLS(roots, spiffe.ControllerID(td), nil)
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoverypb.NewDiscoveryClient(conn)
}

// withToken is ctx carrying token as a proxy sends it.
func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// workloadCert is a certificate for id issued by authority, as a proxy holds it.
func workloadCert(t *testing.T, authority *ca.CA, id spiffeid.ID) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	leaf, chain, err := authority.Sign(csr, id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: append([][]byte{leaf.Raw}, chain...), PrivateKey: key, Leaf: leaf}
}

func runServer(t *testing.T, srv *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestWatchDeliversTheFileAndItsChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "discovery.yaml")
	writeAtomically(t, path, fileWithVIP("198.19.0.10:80"))
	file, err := discovery.NewFile(path, discovery.FileOptions{Interval: 10 * time.Millisecond, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	authority := newCA(t)
	srv := newServer(t, file, authority, quiet())
	runServer(t, srv)
	client := dial(t, serveTLS(t, srv, authority), authority, nil)

	tests := []struct {
		name    string
		targets []string
		want    []string // service names in the first snapshot
	}{
		{"no targets watch every service", nil, []string{"stockdata.stocks", "other.ns"}},
		{"a VIP target selects its service", []string{"198.19.0.10:80"}, []string{"stockdata.stocks"}},
		{"an authority target matches case-insensitively", []string{"StockData.Stocks:80"}, []string{"stockdata.stocks"}},
		{"an unknown target selects nothing", []string{"198.19.1.1:80"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			t.Cleanup(cancel)
			stream, err := client.Watch(withToken(ctx, stockwebToken), &discoverypb.WatchRequest{Identity: stockweb.String(), Targets: tt.targets})
			if err != nil {
				t.Fatal(err)
			}
			pb, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, s := range pb.Services {
				names = append(names, s.Name)
			}
			if len(names) != len(tt.want) || (len(names) > 0 && names[0] != tt.want[0]) {
				t.Errorf("services %v, want %v", names, tt.want)
			}
			if pb.Revision != file.Snapshot().Revision() || pb.TrustDomain != "cluster.local" {
				t.Errorf("revision %q trust domain %q, want the file's %q", pb.Revision, pb.TrustDomain, file.Snapshot().Revision())
			}
		})
	}

	t.Run("a change to the file reaches a watcher", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		stream, err := client.Watch(withToken(ctx, stockwebToken), &discoverypb.WatchRequest{})
		if err != nil {
			t.Fatal(err)
		}
		first, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		writeAtomically(t, path, fileWithVIP("198.19.0.20:80"))
		next, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if next.Revision == first.Revision || next.Services[0].Addresses[0] != "198.19.0.20:80" {
			t.Errorf("after the change: revision %q (was %q), addresses %v", next.Revision, first.Revision, next.Services[0].Addresses)
		}
		snap, err := discovery.FromProto(next)
		if err != nil {
			t.Fatalf("the proxy refuses what the controller sent: %v", err)
		}
		if _, ok := snap.Lookup(netip.MustParseAddrPort("198.19.0.20:80")); !ok {
			t.Errorf("the new VIP does not resolve")
		}
	})
}

// chanSource is a discovery.Source the test feeds by hand.
type chanSource struct{ ch chan *discovery.Snapshot }

func (s chanSource) Watch(ctx context.Context) <-chan *discovery.Snapshot {
	out := make(chan *discovery.Snapshot)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case snap := <-s.ch:
				select {
				case out <- snap:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// slowStream is a Watch stream whose Send blocks until the test lets it through, like a proxy
// on a congested link.
type slowStream struct {
	grpc.ServerStream
	ctx     context.Context
	release chan struct{}
	sent    chan *discoverypb.Snapshot
}

func (s *slowStream) Context() context.Context { return s.ctx }

func (s *slowStream) Send(pb *discoverypb.Snapshot) error {
	s.sent <- pb
	select {
	case <-s.release:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// authenticated is the context of a call that sent token, as the server sees it.
func authenticated(token string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
}

func snapshotWithVIP(t *testing.T, vip string) *discovery.Snapshot {
	t.Helper()
	s, err := discovery.Parse("test", []byte(fileWithVIP(vip)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestASlowWatcherGetsTheNewestSnapshotNotABacklog(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	srv := newServer(t, src, newCA(t), quiet())
	runServer(t, srv)
	publish := func(vip string) {
		t.Helper()
		src.ch <- snapshotWithVIP(t, vip)
		// Run converts it before taking the next one; wait until it is current.
		for {
			cur, changed := srv.Current()
			if cur != nil && cur.Services[0].Addresses[0] == vip {
				return
			}
			select {
			case <-changed:
			case <-time.After(10 * time.Second):
				t.Fatalf("snapshot %s never became current", vip)
			}
		}
	}
	publish("198.19.0.1:80")

	ctx, cancel := context.WithCancel(authenticated(stockwebToken))
	stream := &slowStream{ctx: ctx, release: make(chan struct{}), sent: make(chan *discoverypb.Snapshot, 10)}
	done := make(chan error, 1)
	go func() { done <- srv.Watch(&discoverypb.WatchRequest{}, stream) }()
	t.Cleanup(func() { cancel(); <-done })

	first := <-stream.sent // Send is now blocked on it
	if got := first.Services[0].Addresses[0]; got != "198.19.0.1:80" {
		t.Fatalf("first snapshot has %s", got)
	}
	for _, vip := range []string{"198.19.0.2:80", "198.19.0.3:80", "198.19.0.4:80"} {
		publish(vip)
	}
	stream.release <- struct{}{}
	second := <-stream.sent
	if got := second.Services[0].Addresses[0]; got != "198.19.0.4:80" {
		t.Errorf("after falling behind the watcher got %s, want the newest, 198.19.0.4:80", got)
	}
	select {
	case extra := <-stream.sent:
		t.Errorf("an old snapshot followed: %s", extra.Services[0].Addresses[0])
	default:
	}
}

func TestWatchEndsWhenTheServerStops(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	srv := newServer(t, src, newCA(t), quiet())
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { srv.Run(ctx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran })
	stream := &slowStream{ctx: authenticated(stockwebToken), release: make(chan struct{}), sent: make(chan *discoverypb.Snapshot, 1)}
	done := make(chan error, 1)
	go func() { done <- srv.Watch(&discoverypb.WatchRequest{}, stream) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch ended with %v, want nil so the proxy reconnects", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch outlived the server; GracefulStop would hang")
	}
}

func TestWatchServesOnlyAuthenticatedCallers(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	authority, err := ca.Init(caDir, td)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := ca.Init(filepath.Join(t.TempDir(), "foreign"), td) // same trust domain, another CA
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "discovery.yaml")
	writeAtomically(t, path, fileWithVIP("198.19.0.10:80"))
	file, err := discovery.NewFile(path, discovery.FileOptions{Interval: time.Hour, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	srv := newServer(t, file, authority, slog.New(slog.NewTextHandler(logs, nil)))
	runServer(t, srv)
	addr := serveTLS(t, srv, authority)

	tests := []struct {
		name     string
		cert     *tls.Certificate
		token    string // sent as "authorization: Bearer <token>" unless empty
		header   string // a raw authorization value, instead of token
		identity string // WatchRequest.Identity
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "a caller with no credential is told what to present", wantCode: codes.Unauthenticated,
			wantMsg: "present a workload certificate of trust domain cluster.local, or send a bootstrap token"},
		{name: "the message names the proxy's flag", wantCode: codes.Unauthenticated, wantMsg: "--identity-token"},
		{name: "a wrong token is refused", token: "0123456789abcdef0123456789abcdef",
			wantCode: codes.Unauthenticated, wantMsg: "proves no identity"},
		{name: "a prefix of a good token is refused", token: stockwebToken[:20],
			wantCode: codes.Unauthenticated, wantMsg: "proves no identity"},
		{name: "a token under another scheme is refused", header: "Basic " + stockwebToken,
			wantCode: codes.Unauthenticated, wantMsg: "not \"Bearer <token>\""},
		{name: "a good token is accepted", token: stockwebToken, wantCode: codes.OK},
		{name: "the Bearer scheme is case-insensitive", header: "bearer " + stockwebToken, wantCode: codes.OK},
		{name: "a good token naming its own identity is accepted", token: stockwebToken, identity: stockweb.String(), wantCode: codes.OK},
		{name: "a request naming another identity than its token proves is denied", token: stockwebToken, identity: stockdata.String(),
			wantCode: codes.PermissionDenied, wantMsg: "the caller proved: " + stockweb.String()},
		{name: "a workload certificate of the CA is accepted", cert: workloadCert(t, authority, stockdata), wantCode: codes.OK},
		{name: "a workload certificate naming its own identity is accepted", cert: workloadCert(t, authority, stockdata),
			identity: stockdata.String(), wantCode: codes.OK},
		{name: "a request naming another identity than its certificate proves is denied", cert: workloadCert(t, authority, stockdata),
			identity: stockweb.String(), wantCode: codes.PermissionDenied, wantMsg: "the caller proved: " + stockdata.String()},
		{name: "a certificate of another CA is refused", cert: workloadCert(t, foreign, stockdata),
			wantCode: codes.Unauthenticated, wantMsg: "not a valid workload certificate"},
		{name: "a certificate of another CA is refused even beside a good token", cert: workloadCert(t, foreign, stockweb), token: stockwebToken,
			wantCode: codes.Unauthenticated, wantMsg: "does not chain to the trust anchors"},
		{name: "a leaf sent without its issuer is refused", cert: withoutIssuer(workloadCert(t, authority, stockdata)),
			wantCode: codes.Unauthenticated, wantMsg: "not a valid workload certificate"},
		{name: "a certificate for the trust domain itself, not a workload, is refused",
			cert:     issuedCert(t, authority, caDir, func(c *x509.Certificate) { c.URIs = []*url.URL{td.ID().URL()} }),
			wantCode: codes.Unauthenticated, wantMsg: "names a trust domain, not a workload"},
		{name: "a CA certificate of the issuer is refused",
			cert: issuedCert(t, authority, caDir, func(c *x509.Certificate) {
				c.IsCA, c.BasicConstraintsValid, c.ExtKeyUsage = true, true, nil
				c.KeyUsage |= x509.KeyUsageCertSign
			}),
			wantCode: codes.Unauthenticated, wantMsg: "leaf certificate is a CA"},
		{name: "a certificate without clientAuth is refused",
			cert:     issuedCert(t, authority, caDir, func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }),
			wantCode: codes.Unauthenticated, wantMsg: "lacks extended key usage clientAuth"},
		{name: "a certificate without any extended key usage is refused",
			cert:     issuedCert(t, authority, caDir, func(c *x509.Certificate) { c.ExtKeyUsage = nil }),
			wantCode: codes.Unauthenticated, wantMsg: "lacks extended key usage clientAuth"},
		{name: "a certificate of a foreign trust domain is refused",
			cert: issuedCert(t, authority, caDir, func(c *x509.Certificate) {
				c.URIs = []*url.URL{spiffeid.RequireFromString("spiffe://evil.example/ns/stocks/sa/stockdata").URL()}
			}),
			wantCode: codes.Unauthenticated, wantMsg: "not \"cluster.local\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := dial(t, addr, authority, tt.cert)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			t.Cleanup(cancel)
			switch {
			case tt.header != "":
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", tt.header)
			case tt.token != "":
				ctx = withToken(ctx, tt.token)
			}
			refusalsBefore := len(logs.Lines("level=WARN"))
			stream, err := client.Watch(ctx, &discoverypb.WatchRequest{Identity: tt.identity})
			if err != nil {
				t.Fatal(err)
			}
			pb, err := stream.Recv()
			st := status.Convert(err)
			if st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("Watch: %s %q, want %s containing %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			refusals := logs.Lines("level=WARN")[refusalsBefore:]
			if tt.wantCode == codes.OK {
				if len(pb.GetServices()) != 2 {
					t.Errorf("an accepted watch got %d services, want the file's 2", len(pb.GetServices()))
				}
				if len(refusals) != 0 {
					t.Errorf("an accepted watch logged a refusal: %v", refusals)
				}
				return
			}
			if len(refusals) != 1 || !strings.Contains(refusals[0], "peer=127.0.0.1:") {
				t.Errorf("want one warning naming the peer, got %q", refusals)
			}
			for _, secret := range []string{stockwebToken, stockdataToken} {
				if strings.Contains(st.Message(), secret) || strings.Contains(strings.Join(refusals, "\n"), secret) {
					t.Errorf("a refusal reveals a token")
				}
			}
		})
	}
}

// withoutIssuer is cert sent as its leaf alone: the controller must not complete the chain
// with an issuer it knows.
func withoutIssuer(cert *tls.Certificate) *tls.Certificate {
	return &tls.Certificate{Certificate: cert.Certificate[:1], PrivateKey: cert.PrivateKey, Leaf: cert.Leaf}
}

// trustDomainCert is a certificate signed by authority's own issuer, as a bug in the CA might
// make one, for the trust domain itself rather than a workload in it.
// issuedCert is a certificate the CA's own issuer signed (its key read from dir), made from a
// valid stockdata workload template that edit spoils: what only a stolen issuer key or a buggy
// CA could produce, which the controller must still refuse.
func issuedCert(t *testing.T, authority *ca.CA, dir string, edit func(*x509.Certificate)) *tls.Certificate {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, ca.IssuerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	issuerKey, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), URIs: []*url.URL{stockdata.URL()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	edit(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, authority.Issuer(), &key.PublicKey, issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, authority.Issuer().Raw}, PrivateKey: key}
}
