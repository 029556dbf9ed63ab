package destination

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
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

// serveTLS runs srv's Stream on a loopback TLS port with a controller certificate from authority
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

// fileSource is a discovery file that the test rewrites, followed by the file source.
func fileSource(t *testing.T, content string) (*discovery.File, func(string)) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "discovery.yaml")
	writeAtomically(t, path, content)
	file, err := discovery.NewFile(path, discovery.FileOptions{Interval: 5 * time.Millisecond, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return file, func(content string) { t.Helper(); writeAtomically(t, path, content) }
}

// twoServices is stockdata.stocks with the endpoints given and other.ns with one.
func twoServices(stockdata ...string) string {
	var b strings.Builder
	b.WriteString("services:\n  - name: stockdata.stocks\n    addresses: [\"198.19.0.10:80\", \"stockdata.stocks:80\"]\n    endpoints:\n")
	for _, e := range stockdata {
		fmt.Fprintf(&b, "      - address: %s\n        identity: spiffe://cluster.local/ns/stocks/sa/stockdata\n", e)
	}
	b.WriteString("  - name: other.ns\n    addresses: [\"198.19.9.9:80\"]\n    endpoints:\n      - address: 198.18.9.9:80\n")
	return b.String()
}

// open opens a stream as stockweb, sends first and returns the stream with its first response.
func open(t *testing.T, client discoverypb.DiscoveryClient, first *discoverypb.DiscoveryRequest) (discoverypb.Discovery_StreamClient, *discoverypb.DiscoveryResponse) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	stream, err := client.Stream(withToken(ctx, stockwebToken))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(first); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return stream, resp
}

func recv(t *testing.T, stream discoverypb.Discovery_StreamClient) *discoverypb.DiscoveryResponse {
	t.Helper()
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// Every response is answered, as a proxy does.
	if err := stream.Send(&discoverypb.DiscoveryRequest{ResponseNonce: resp.Nonce}); err != nil {
		t.Fatal(err)
	}
	return resp
}

func epAddrs(m *discoverypb.Endpoints) []string {
	var out []string
	for _, e := range m.Endpoints {
		out = append(out, e.Address)
	}
	return out
}

func TestStreamSendsTheTableThenTheEndpointsOfSubscriptionsOnly(t *testing.T) {
	file, rewrite := fileSource(t, twoServices("198.18.0.11:8080"))
	authority := newCA(t)
	srv := newServer(t, file, authority, quiet())
	runServer(t, srv)
	client := dial(t, serveTLS(t, srv, authority), authority, nil)

	stream, first := open(t, client, &discoverypb.DiscoveryRequest{Identity: stockweb.String()})
	tbl := first.GetTable()
	if tbl == nil || tbl.BaseVersion != "" || len(tbl.Services) != 2 || tbl.TrustDomain != "cluster.local" || len(first.Endpoints) != 0 {
		t.Fatalf("first response %v, want the complete table of 2 services and no endpoints", first)
	}
	if s := tbl.Services[0]; s.Name != "stockdata.stocks" || !slices.Equal(s.Addresses, []string{"198.19.0.10:80"}) || !slices.Equal(s.Authorities, []string{"stockdata.stocks:80"}) {
		t.Errorf("entry %v", s)
	}
	if err := stream.Send(&discoverypb.DiscoveryRequest{ResponseNonce: first.Nonce,
		Subscribe: []*discoverypb.Subscription{{Service: "stockdata.stocks"}}}); err != nil {
		t.Fatal(err)
	}
	sub := recv(t, stream)
	if sub.Table != nil || len(sub.Endpoints) != 1 || sub.Endpoints[0].BaseVersion != "" ||
		!slices.Equal(epAddrs(sub.Endpoints[0]), []string{"198.18.0.11:8080"}) {
		t.Fatalf("after subscribing: %v, want stockdata's complete set", sub)
	}
	v1 := sub.Endpoints[0].Version

	// A change of a service the proxy does not follow sends it nothing; the next change of one
	// it follows is the next message, a delta of one endpoint.
	rewrite(strings.Replace(twoServices("198.18.0.11:8080"), "198.18.9.9:80", "198.18.9.8:80", 1))
	rewrite(strings.Replace(twoServices("198.18.0.11:8080", "198.18.0.12:8080"), "198.18.9.9:80", "198.18.9.8:80", 1))
	d := recv(t, stream)
	if d.Table != nil || len(d.Endpoints) != 1 {
		t.Fatalf("after the changes: %v, want one endpoint delta", d)
	}
	e := d.Endpoints[0]
	if e.Service != "stockdata.stocks" || e.BaseVersion != v1 || !slices.Equal(epAddrs(e), []string{"198.18.0.12:8080"}) || len(e.Removed) != 0 {
		t.Errorf("delta %v, want 198.18.0.12:8080 added to %s", e, v1)
	}
	if got := e.Endpoints[0].Identity; got != "spiffe://cluster.local/ns/stocks/sa/stockdata" {
		t.Errorf("identity %q", got)
	}

	// Unsubscribed, the proxy hears of the service no more, but the table still reaches it.
	if err := stream.Send(&discoverypb.DiscoveryRequest{Unsubscribe: []string{"stockdata.stocks"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(subscribers(srv, "stockdata.stocks")) == 0 })
	rewrite(strings.Replace(twoServices("198.18.0.12:8080"), "198.19.9.9:80", "198.19.9.7:80", 1))
	tc := recv(t, stream)
	if tc.Table == nil || tc.Table.BaseVersion != tbl.Version || len(tc.Table.Services) != 1 || tc.Table.Services[0].Name != "other.ns" || len(tc.Endpoints) != 0 {
		t.Errorf("after a change of other.ns's VIP and stockdata's endpoints: %v, want only other.ns's new entry", tc)
	}
}

func subscribers(srv *Server, name string) []*stream {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	var out []*stream
	for c := range srv.subscribers[name] {
		out = append(out, c)
	}
	return out
}

// waitFor waits for cond; the limit only bounds a failing test.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
	}
}

func TestAChangeGoesOnlyToTheStreamsSubscribedToIt(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	authority := newCA(t)
	srv := newServer(t, src, authority, quiet())
	runServer(t, srv)
	client := dial(t, serveTLS(t, srv, authority), authority, nil)
	src.ch <- snapshotOf(t, twoServices("198.18.0.11:8080"))

	follows := map[string]discoverypb.Discovery_StreamClient{}
	for _, name := range []string{"stockdata.stocks", "other.ns"} {
		stream, first := open(t, client, &discoverypb.DiscoveryRequest{Subscribe: []*discoverypb.Subscription{{Service: name}}})
		if len(first.Endpoints) != 1 || first.Endpoints[0].Service != name {
			t.Fatalf("first response of a stream subscribing to %s: %v", name, first)
		}
		follows[name] = stream
	}
	msgs, bytes := srv.Sent()
	src.ch <- snapshotOf(t, twoServices("198.18.0.11:8080", "198.18.0.12:8080"))
	d := recv(t, follows["stockdata.stocks"])
	if len(d.Endpoints) != 1 || d.Endpoints[0].Service != "stockdata.stocks" {
		t.Fatalf("the subscriber got %v", d)
	}
	m2, b2 := srv.Sent()
	if m2-msgs != 1 {
		t.Errorf("%d responses were sent for a change of one service with one subscriber", m2-msgs)
	}
	if b2-bytes > 200 {
		t.Errorf("%d bytes were sent for one added endpoint", b2-bytes)
	}
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

func snapshotOf(t *testing.T, yaml string) *discovery.Snapshot {
	t.Helper()
	s, err := discovery.Parse("test", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fakeStream is a Stream's server side driven by the test: Send blocks until the test lets it
// through, like a proxy on a congested link, and requests come from a channel.
type fakeStream struct {
	grpc.ServerStream
	ctx      context.Context
	requests chan *discoverypb.DiscoveryRequest
	release  chan struct{}
	sent     chan *discoverypb.DiscoveryResponse
}

func newFakeStream(ctx context.Context) *fakeStream {
	return &fakeStream{ctx: ctx, requests: make(chan *discoverypb.DiscoveryRequest, 10),
		release: make(chan struct{}), sent: make(chan *discoverypb.DiscoveryResponse, 10)}
}

func (s *fakeStream) Context() context.Context { return s.ctx }

func (s *fakeStream) Send(resp *discoverypb.DiscoveryResponse) error {
	s.sent <- resp
	select {
	case <-s.release:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *fakeStream) Recv() (*discoverypb.DiscoveryRequest, error) {
	select {
	case r := <-s.requests:
		return r, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

// next is the next response the server sends, which it then finishes sending.
func (s *fakeStream) next(t *testing.T) *discoverypb.DiscoveryResponse {
	t.Helper()
	select {
	case r := <-s.sent:
		s.release <- struct{}{}
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no response")
	}
	return nil
}

// authenticated is the context of a call that sent token, as the server sees it.
func authenticated(token string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
}

// publisher feeds a chanSource and waits until the server has taken each snapshot.
func publisher(t *testing.T, src chanSource, srv *Server) func(yaml string) *state {
	return func(yaml string) *state {
		t.Helper()
		snap := snapshotOf(t, yaml)
		src.ch <- snap
		var st *state
		waitFor(t, func() bool {
			srv.mu.Lock()
			defer srv.mu.Unlock()
			st = srv.cur
			return st != nil && st.services["stockdata.stocks"].svc == snap.Services()[0]
		})
		return st
	}
}

func TestASlowStreamGetsTheNewestStateNotABacklog(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	srv := newServer(t, src, newCA(t), quiet())
	runServer(t, srv)
	publish := publisher(t, src, srv)
	publish(twoServices("198.18.0.1:80"))

	ctx, cancel := context.WithCancel(authenticated(stockwebToken))
	stream := newFakeStream(ctx)
	stream.requests <- &discoverypb.DiscoveryRequest{Subscribe: []*discoverypb.Subscription{{Service: "stockdata.stocks"}}}
	done := make(chan error, 1)
	go func() { done <- srv.Stream(stream) }()
	t.Cleanup(func() { cancel(); <-done })

	first := <-stream.sent // Send is now blocked on it
	if len(first.Endpoints) != 1 || !slices.Equal(epAddrs(first.Endpoints[0]), []string{"198.18.0.1:80"}) {
		t.Fatalf("first response %v", first)
	}
	var last *state
	for _, e := range []string{"198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:80"} {
		last = publish(twoServices(e))
	}
	stream.release <- struct{}{}
	second := stream.next(t)
	want := last.services["stockdata.stocks"].eps.version
	if len(second.Endpoints) != 1 || second.Endpoints[0].Version != want || second.Endpoints[0].BaseVersion != "" ||
		!slices.Equal(epAddrs(second.Endpoints[0]), []string{"198.18.0.4:80"}) {
		t.Errorf("after falling behind the stream got %v, want the newest set (%s) complete", second, want)
	}
	select {
	case extra := <-stream.sent:
		t.Errorf("an old state followed: %v", extra)
	default:
	}
}

func TestAStreamResumesWithoutAResend(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	srv := newServer(t, src, newCA(t), quiet())
	runServer(t, srv)
	st := publisher(t, src, srv)(twoServices("198.18.0.1:80", "198.18.0.2:80"))
	have := st.services["stockdata.stocks"].eps

	for _, tt := range []struct {
		name      string
		table     string
		version   string
		wantTable bool
		wantEps   string // "" none, "delta", "complete"
	}{
		{"a proxy holding the current versions gets an empty first response", st.table, have.version, false, ""},
		{"a proxy with an old endpoint version gets the set", st.table, "0123456789abcdef", false, "complete"},
		{"a proxy with an unknown table version gets the table", "0123456789abcdef", have.version, true, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(authenticated(stockwebToken))
			stream := newFakeStream(ctx)
			stream.requests <- &discoverypb.DiscoveryRequest{TableVersion: tt.table,
				Subscribe: []*discoverypb.Subscription{{Service: "stockdata.stocks", Version: tt.version}}}
			done := make(chan error, 1)
			go func() { done <- srv.Stream(stream) }()
			defer func() { cancel(); <-done }()
			first := stream.next(t)
			if (first.Table != nil) != tt.wantTable {
				t.Errorf("table %v, want one: %v", first.Table, tt.wantTable)
			}
			switch tt.wantEps {
			case "":
				if len(first.Endpoints) != 0 {
					t.Errorf("endpoints %v, want none", first.Endpoints)
				}
			case "complete":
				if len(first.Endpoints) != 1 || first.Endpoints[0].BaseVersion != "" || len(first.Endpoints[0].Endpoints) != 2 {
					t.Errorf("endpoints %v, want the complete set", first.Endpoints)
				}
			}
		})
	}
}

func TestARefusedVersionIsNotSentAgain(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	srv := newServer(t, src, newCA(t), quiet())
	runServer(t, srv)
	publish := publisher(t, src, srv)
	publish(twoServices("198.18.0.1:80"))

	ctx, cancel := context.WithCancel(authenticated(stockwebToken))
	stream := newFakeStream(ctx)
	stream.requests <- &discoverypb.DiscoveryRequest{Subscribe: []*discoverypb.Subscription{{Service: "stockdata.stocks"}}}
	done := make(chan error, 1)
	go func() { done <- srv.Stream(stream) }()
	t.Cleanup(func() { cancel(); <-done })
	first := stream.next(t)
	held := first.Endpoints[0].Version

	v2 := publish(twoServices("198.18.0.1:80", "198.18.0.2:80"))
	refused := stream.next(t)
	if refused.Endpoints[0].BaseVersion != held {
		t.Fatalf("want a delta from %s, got %v", held, refused)
	}
	// The proxy refuses it and says it still holds the first version.
	stream.requests <- &discoverypb.DiscoveryRequest{ResponseNonce: refused.Nonce, ErrorDetail: "endpoints[0]: bad",
		TableVersion: v2.table, Subscribe: []*discoverypb.Subscription{{Service: "stockdata.stocks", Version: held}}}
	waitFor(t, func() bool {
		for _, c := range subscribers(srv, "stockdata.stocks") {
			c.mu.Lock()
			sub := c.subs["stockdata.stocks"]
			ok := sub.version == held && sub.refused == v2.services["stockdata.stocks"].eps.version
			c.mu.Unlock()
			if ok {
				return true
			}
		}
		return false
	})
	// The next response is the third version, complete (the proxy's version is not its delta's
	// base), not the refused one again.
	v3 := publish(twoServices("198.18.0.3:80"))
	third := stream.next(t)
	if e := third.Endpoints[0]; e.Version != v3.services["stockdata.stocks"].eps.version || e.BaseVersion != "" {
		t.Errorf("after the refusal: %v, want the third version complete", third)
	}
}

func TestASubscriptionToAnUnknownServiceIsAnswered(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	srv := newServer(t, src, newCA(t), quiet())
	runServer(t, srv)
	publish := publisher(t, src, srv)
	publish(twoServices("198.18.0.1:80"))
	ctx, cancel := context.WithCancel(authenticated(stockwebToken))
	stream := newFakeStream(ctx)
	stream.requests <- &discoverypb.DiscoveryRequest{Subscribe: []*discoverypb.Subscription{{Service: "nope.ns"}}}
	done := make(chan error, 1)
	go func() { done <- srv.Stream(stream) }()
	t.Cleanup(func() { cancel(); <-done })
	first := stream.next(t)
	if len(first.Endpoints) != 1 || !first.Endpoints[0].Unknown || first.Endpoints[0].Service != "nope.ns" {
		t.Fatalf("want nope.ns unknown, got %v", first)
	}
	// It appears: the subscriber gets its set.
	publish(twoServices("198.18.0.1:80") + "  - name: nope.ns\n    addresses: [\"198.19.8.8:80\"]\n    endpoints:\n      - address: 198.18.8.8:80\n")
	got := stream.next(t)
	if got.Table == nil || len(got.Endpoints) != 1 || got.Endpoints[0].Unknown || len(got.Endpoints[0].Endpoints) != 1 {
		t.Errorf("after nope.ns appeared: %v", got)
	}
}

func TestStreamRefusesABadRequest(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	srv := newServer(t, src, newCA(t), quiet())
	runServer(t, srv)
	for _, req := range []*discoverypb.DiscoveryRequest{
		{Subscribe: []*discoverypb.Subscription{{Service: "Not A Name"}}},
		{Unsubscribe: []string{""}},
	} {
		stream := newFakeStream(authenticated(stockwebToken))
		stream.requests <- req
		if err := srv.Stream(stream); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want InvalidArgument", req, err)
		}
	}
}

func TestStreamEndsWhenTheServerStops(t *testing.T) {
	src := chanSource{ch: make(chan *discovery.Snapshot)}
	srv := newServer(t, src, newCA(t), quiet())
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { srv.Run(ctx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran })
	stream := newFakeStream(authenticated(stockwebToken))
	stream.requests <- &discoverypb.DiscoveryRequest{}
	done := make(chan error, 1)
	go func() { done <- srv.Stream(stream) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Stream ended with %v, want nil so the proxy reconnects", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stream outlived the server; GracefulStop would hang")
	}
}

func TestStreamKeepsThePerAddressThrottle(t *testing.T) {
	authority := newCA(t)
	tokens, err := cidentity.ParseTokens([]byte(stockwebToken+" "+stockweb.String()+"\n"), td)
	if err != nil {
		t.Fatal(err)
	}
	file, _ := fileSource(t, twoServices("198.18.0.1:80"))
	srv := NewServer(Config{Source: file, Auth: cidentity.NewAuthenticator(authority, cidentity.NewThrottle(tokens, 3, time.Hour, quiet())), Logger: quiet()})
	runServer(t, srv)
	client := dial(t, serveTLS(t, srv, authority), authority, nil)
	try := func(token string) codes.Code {
		ctx, cancel := context.WithTimeout(withToken(context.Background(), token), 10*time.Second)
		defer cancel()
		stream, err := client.Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&discoverypb.DiscoveryRequest{})
		_, err = stream.Recv()
		return status.Code(err)
	}
	if got := try(stockwebToken); got != codes.OK {
		t.Fatalf("a good token: %v", got)
	}
	for range 3 {
		if got := try("0123456789abcdef0123456789abcdef"); got != codes.Unauthenticated {
			t.Fatalf("a bad token: %v", got)
		}
	}
	if got := try(stockwebToken); got != codes.ResourceExhausted {
		t.Fatalf("a good token after three failures from the address: %v, want ResourceExhausted", got)
	}
}

func TestStreamServesOnlyAuthenticatedCallers(t *testing.T) {
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
		identity string // DiscoveryRequest.Identity
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
			stream, err := client.Stream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&discoverypb.DiscoveryRequest{Identity: tt.identity}); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			pb, err := stream.Recv()
			st := status.Convert(err)
			if st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("Stream: %s %q, want %s containing %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			refusals := logs.Lines("level=WARN")[refusalsBefore:]
			if tt.wantCode == codes.OK {
				if len(pb.GetTable().GetServices()) != 2 {
					t.Errorf("an accepted stream got %d services, want the file's 2", len(pb.GetTable().GetServices()))
				}
				if len(refusals) != 0 {
					t.Errorf("an accepted stream logged a refusal: %v", refusals)
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
