package resolve_test

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/controller/destination"
	"github.com/detourmesh/detour/controller/identity"
	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/proxy/resolve"
	"github.com/detourmesh/detour/spiffe"
)

const stockwebToken = "9b2e41d07c3f5a8e6d1b0c4f7a2e9d36"

var (
	td       = spiffeid.RequireTrustDomainFromString("cluster.local")
	stockweb = spiffeid.RequireFromString("spiffe://cluster.local/ns/web/sa/stockweb")
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func serviceFile(vip string) string {
	return "services:\n  - name: stockdata.stocks\n    addresses: [\"" + vip + "\"]\n"
}

func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// fakeController serves a DiscoveryServer on a loopback TLS port that can be stopped and
// started again on the same address.
type fakeController struct {
	t     *testing.T
	ca    *ca.CA
	srv   discoverypb.DiscoveryServer
	dest  *destination.Server // the real service, when it is one
	addr  string
	token string // path of a file holding stockweb's bootstrap token

	mu sync.Mutex
	gs *grpc.Server
}

func newAuthority(t *testing.T) *ca.CA {
	t.Helper()
	authority, err := ca.Init(filepath.Join(t.TempDir(), "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	return authority
}

func newFakeController(t *testing.T, authority *ca.CA, srv discoverypb.DiscoveryServer) *fakeController {
	t.Helper()
	k := &fakeController{t: t, ca: authority, srv: srv, addr: "127.0.0.1:0", token: filepath.Join(t.TempDir(), "token")}
	// The proxy's token file holds only the token; the controller's maps it to the identity.
	if err := os.WriteFile(k.token, []byte(stockwebToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k.start()
	t.Cleanup(k.stop)
	return k
}

func (k *fakeController) start() {
	k.t.Helper()
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
	discoverypb.RegisterDiscoveryServer(gs, k.srv)
	go gs.Serve(lis)
	k.mu.Lock()
	k.gs = gs
	k.mu.Unlock()
}

func (k *fakeController) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gs != nil {
		k.gs.Stop()
		k.gs = nil
	}
}

func (k *fakeController) options() resolve.ControllerOptions {
	anchors := spiffe.Pool([]*x509.Certificate{k.ca.TrustAnchor()})
	return resolve.ControllerOptions{
		Address:      k.addr,
		TLS:          spiffe.ClientTLS(anchors, spiffe.ControllerID(td), nil),
		Identity:     stockweb.String(),
		TokenFile:    k.token,
		StartTimeout: 10 * time.Second,
		MinBackoff:   20 * time.Millisecond,
		MaxBackoff:   200 * time.Millisecond,
		Logger:       quietLog(),
	}
}

// fileController is the real controller discovery service over a discovery file, serving the
// holder of stockweb's token.
func fileController(t *testing.T, content string) (*fakeController, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "discovery.yaml")
	replaceFile(t, path, content)
	file, err := discovery.NewFile(path, discovery.FileOptions{Interval: 10 * time.Millisecond, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := identity.ParseTokens([]byte(stockwebToken+" "+stockweb.String()+"\n"), td)
	if err != nil {
		t.Fatal(err)
	}
	authority := newAuthority(t)
	srv := destination.NewServer(destination.Config{Source: file, Auth: identity.NewAuthenticator(authority, tokens), Logger: quietLog()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	k := newFakeController(t, authority, srv)
	k.dest = srv
	return k, path
}

func (k *fakeController) sentBytes() uint64 {
	_, b := k.dest.Sent()
	return b
}

func startSource(t *testing.T, opts resolve.ControllerOptions) *resolve.Controller {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	src, err := resolve.StartController(ctx, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-src.Done() })
	return src
}

// until receives from a Watch channel until a snapshot satisfies ok; the limit bounds a failing
// test.
func until(t *testing.T, ch <-chan *discovery.Snapshot, what string, ok func(*discovery.Snapshot) bool) *discovery.Snapshot {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case s, open := <-ch:
			if !open {
				t.Fatal("watch channel closed")
			}
			if ok(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("no snapshot %s", what)
		}
	}
}

// endpointsOf returns the addresses of the named service's endpoints, or "unresolved".
func endpointsOf(s *discovery.Snapshot, name string) string {
	svc, ok := s.Service(name)
	if !ok {
		return "absent"
	}
	if svc.Unresolved {
		return "unresolved"
	}
	var out []string
	for _, e := range svc.Endpoints {
		out = append(out, e.Addr.String())
	}
	return strings.Join(out, ",")
}

func withEndpoints(vip string, eps ...string) string {
	var b strings.Builder
	b.WriteString(serviceFile(vip) + "    endpoints:\n")
	for _, e := range eps {
		b.WriteString("      - address: " + e + "\n")
	}
	b.WriteString("  - name: other.ns\n    addresses: [\"198.19.9.9:80\"]\n    endpoints:\n      - address: 198.18.9.9:80\n")
	return b.String()
}

func TestControllerSourceResolvesAServiceOnFirstUseOnly(t *testing.T) {
	k, path := fileController(t, withEndpoints("198.19.0.1:80", "198.18.0.1:8080"))
	src := startSource(t, k.options())
	first := src.Snapshot()
	if got := endpointsOf(first, "stockdata.stocks"); got != "unresolved" {
		t.Fatalf("before any use stockdata.stocks is %s, want unresolved", got)
	}
	if _, ok := first.Lookup(netip.MustParseAddrPort("198.19.9.9:80")); !ok {
		t.Fatalf("the table lacks other.ns")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := src.Watch(ctx)
	release := src.Use("stockdata.stocks")
	defer release()
	s := until(t, ch, "with stockdata resolved", func(s *discovery.Snapshot) bool { return endpointsOf(s, "stockdata.stocks") != "unresolved" })
	if got := endpointsOf(s, "stockdata.stocks"); got != "198.18.0.1:8080" {
		t.Errorf("stockdata.stocks resolved to %s", got)
	}
	if got := endpointsOf(s, "other.ns"); got != "unresolved" {
		t.Errorf("other.ns, never used, is %s", got)
	}

	// An added endpoint reaches the proxy; the entry (and so the index) is unchanged.
	replaceFile(t, path, withEndpoints("198.19.0.1:80", "198.18.0.1:8080", "198.18.0.2:8080"))
	s2 := until(t, ch, "with two endpoints", func(s *discovery.Snapshot) bool {
		return endpointsOf(s, "stockdata.stocks") == "198.18.0.1:8080,198.18.0.2:8080"
	})
	if o1, _ := s.Service("other.ns"); o1 != func() *discovery.Service { o, _ := s2.Service("other.ns"); return o }() {
		t.Errorf("an endpoint change of stockdata made a new other.ns")
	}
}

func TestControllerSourceUnsubscribesAfterTheGracePeriod(t *testing.T) {
	k, _ := fileController(t, withEndpoints("198.19.0.1:80", "198.18.0.1:8080"))
	opts := k.options()
	opts.IdleGrace = 50 * time.Millisecond
	src := startSource(t, opts)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := src.Watch(ctx)
	r1, r2 := src.Use("stockdata.stocks"), src.Use("stockdata.stocks")
	until(t, ch, "resolved", func(s *discovery.Snapshot) bool { return endpointsOf(s, "stockdata.stocks") != "unresolved" })
	r1()
	r1() // a second release of the same use counts once
	// Still in use by r2, it stays while a service used and released beside it expires.
	src.Use("control.stocks")()
	for deadline := time.Now().Add(10 * time.Second); slices.Contains(src.Subscriptions(), "control.stocks"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a released service was not unsubscribed after the grace period")
		}
	}
	if got := src.Subscriptions(); !slices.Equal(got, []string{"stockdata.stocks"}) {
		t.Fatalf("subscriptions %v while a use is held, want [stockdata.stocks]", got)
	}
	r2()
	until(t, ch, "unresolved again", func(s *discovery.Snapshot) bool { return endpointsOf(s, "stockdata.stocks") == "unresolved" })
	if got := src.Subscriptions(); len(got) != 0 {
		t.Errorf("subscriptions %v after the grace period", got)
	}
	// Used again, it is resolved again.
	defer src.Use("stockdata.stocks")()
	until(t, ch, "resolved again", func(s *discovery.Snapshot) bool { return endpointsOf(s, "stockdata.stocks") == "198.18.0.1:8080" })
}

func TestControllerSourceKeepsTheLastGoodStateWhileTheControllerIsAway(t *testing.T) {
	k, path := fileController(t, withEndpoints("198.19.0.1:80", "198.18.0.1:8080"))
	src := startSource(t, k.options())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := src.Watch(ctx)
	defer src.Use("stockdata.stocks")()
	before := until(t, ch, "resolved", func(s *discovery.Snapshot) bool { return endpointsOf(s, "stockdata.stocks") == "198.18.0.1:8080" })

	k.stop()
	// The file changes while no proxy can hear about it.
	replaceFile(t, path, withEndpoints("198.19.0.2:80", "198.18.0.1:8080", "198.18.0.3:8080"))
	// In the controller's place, a port that takes connections and closes them: the source
	// has noticed the loss and retried when it has connected there three times.
	away := refuseAt(t, k.addr)
	for deadline := time.Now().Add(20 * time.Second); away.accepted.Load() < 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the source reconnected %d times in 20 s", away.accepted.Load())
		}
	}
	away.ln.Close()
	if src.Snapshot() != before {
		t.Fatalf("the snapshot changed while the controller was away")
	}
	if src.Err() == nil {
		t.Errorf("Err() is nil while the controller is away")
	}

	k.start()
	after := until(t, ch, "with the new VIP and endpoint", func(s *discovery.Snapshot) bool {
		_, moved := s.Lookup(netip.MustParseAddrPort("198.19.0.2:80"))
		return moved && endpointsOf(s, "stockdata.stocks") == "198.18.0.1:8080,198.18.0.3:8080"
	})
	if after.Revision() == before.Revision() {
		t.Errorf("table version did not change")
	}
	if err := src.Err(); err != nil {
		t.Errorf("Err() = %v after the controller came back", err)
	}
}

func TestControllerSourceResumesWithoutAResend(t *testing.T) {
	k, _ := fileController(t, withEndpoints("198.19.0.1:80", "198.18.0.1:8080"))
	src := startSource(t, k.options())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := src.Watch(ctx)
	defer src.Use("stockdata.stocks")()
	before := until(t, ch, "resolved", func(s *discovery.Snapshot) bool { return endpointsOf(s, "stockdata.stocks") == "198.18.0.1:8080" })
	sentBefore := k.sentBytes()
	k.stop()
	for src.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	k.start()
	for deadline := time.Now().Add(20 * time.Second); src.Err() != nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the source did not reconnect")
		}
	}
	if src.Snapshot() != before {
		t.Errorf("a reconnection to the same content replaced the snapshot")
	}
	if sent := k.sentBytes() - sentBefore; sent > 16 {
		t.Errorf("the controller sent %d bytes to a proxy resuming with current versions, want an empty answer", sent)
	}
}

func TestNewControllerDoesNotWaitForTheController(t *testing.T) {
	k, _ := fileController(t, serviceFile("198.19.0.1:80"))
	k.stop() // down when the proxy starts
	ctx, cancel := context.WithCancel(context.Background())
	src, err := resolve.NewController(ctx, k.options())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-src.Done() })
	if s := src.Snapshot(); s != nil {
		t.Fatalf("a snapshot before the controller answered: %s", s.Revision())
	}
	ch := src.Watch(ctx)
	for deadline := time.Now().Add(10 * time.Second); src.Err() == nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Err() stayed nil with the controller down")
		}
	}
	select {
	case s := <-ch:
		t.Fatalf("Watch delivered %v before the controller answered", s)
	default:
	}
	k.start() // retried in the background: the first snapshot arrives when the controller does
	until(t, ch, "the first table", func(s *discovery.Snapshot) bool {
		_, ok := s.Lookup(netip.MustParseAddrPort("198.19.0.1:80"))
		return ok
	})
	if src.Err() != nil {
		t.Errorf("Err() = %v once the controller answered", src.Err())
	}
}

// refuser listens where a controller was, closing every connection at once, and counts them.
type refuser struct {
	ln       net.Listener
	accepted atomic.Int64
}

func refuseAt(t *testing.T, addr string) *refuser {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &refuser{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			r.accepted.Add(1)
		}
	}()
	return r
}

func TestStartControllerFailsClearlyWhenNoControllerAnswers(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	opts := resolve.ControllerOptions{
		Address:      addr,
		TLS:          spiffe.ClientTLS(spiffe.Pool(nil), spiffe.ControllerID(td), nil),
		StartTimeout: 300 * time.Millisecond,
		MinBackoff:   20 * time.Millisecond,
		Logger:       quietLog(),
	}
	_, err = resolve.StartController(context.Background(), opts)
	if err == nil {
		t.Fatal("started without a controller")
	}
	for _, want := range []string{"no discovery from the controller at " + addr + " within 300ms", "connection refused", "check that the controller runs"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestStartControllerRefusesAnImpostor(t *testing.T) {
	k, _ := fileController(t, serviceFile("198.19.0.1:80"))
	opts := k.options()
	other, err := ca.Init(filepath.Join(t.TempDir(), "other"), td) // same trust domain, another CA
	if err != nil {
		t.Fatal(err)
	}
	opts.TLS = spiffe.ClientTLS(spiffe.Pool([]*x509.Certificate{other.TrustAnchor()}), spiffe.ControllerID(td), nil)
	opts.StartTimeout = 500 * time.Millisecond
	_, err = resolve.StartController(context.Background(), opts)
	if err == nil || !strings.Contains(err.Error(), "does not chain to the trust anchors") {
		t.Fatalf("err = %v, want a certificate refusal", err)
	}
}

// scripted is a Discovery server that sends the responses it is given, in order, and records
// what the proxy sends.
type scripted struct {
	discoverypb.UnimplementedDiscoveryServer
	resps    []*discoverypb.DiscoveryResponse
	requests chan *discoverypb.DiscoveryRequest
	// holdUntilSubscribed is the index of the first response sent only once the proxy has
	// subscribed to something.
	holdUntilSubscribed int
}

func (s *scripted) Stream(stream discoverypb.Discovery_StreamServer) error {
	subscribed := make(chan struct{})
	var once sync.Once
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			if len(req.Subscribe) > 0 {
				once.Do(func() { close(subscribed) })
			}
			s.requests <- req
		}
	}()
	for i, r := range s.resps {
		if i == s.holdUntilSubscribed && i > 0 {
			select {
			case <-subscribed:
			case <-stream.Context().Done():
				return nil
			}
		}
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

func table(version, base, vip string) *discoverypb.ServiceTable {
	return &discoverypb.ServiceTable{Version: version, BaseVersion: base, TrustDomain: "cluster.local",
		Services: []*discoverypb.Service{{Name: "a.b", Addresses: []string{vip}}}}
}

func TestControllerSourceRefusesInvalidMessagesAndKeepsTheLastGoodState(t *testing.T) {
	ep := func(addr, id string) *discoverypb.Endpoint { return &discoverypb.Endpoint{Address: addr, Identity: id} }
	srv := &scripted{requests: make(chan *discoverypb.DiscoveryRequest, 100), holdUntilSubscribed: 3, resps: []*discoverypb.DiscoveryResponse{
		{Nonce: "1", Table: table("t1", "", "198.19.0.1:80")},
		{Nonce: "2", Table: table("t2", "t1", "198.19.0.2:0")},  // port 0: refused
		{Nonce: "3", Table: table("t3", "t2", "198.19.0.3:80")}, // base t2 was refused: refused
		{Nonce: "4", Endpoints: []*discoverypb.Endpoints{{Service: "a.b", Version: "e1",
			Endpoints: []*discoverypb.Endpoint{ep("198.18.0.1:80", "")}}}},
		{Nonce: "5", Endpoints: []*discoverypb.Endpoints{{Service: "a.b", Version: "e2", BaseVersion: "e1",
			Endpoints: []*discoverypb.Endpoint{ep("198.18.0.2:80", "spiffe://evil.example/ns/a/sa/b")}}}}, // foreign identity
		{Nonce: "6", Endpoints: []*discoverypb.Endpoints{{Service: "a.b", Version: "e3", BaseVersion: "e1",
			Endpoints: []*discoverypb.Endpoint{ep("198.18.0.3:80", "")}, Removed: []string{"198.18.0.1:80"}}}},
		{Nonce: "7", Table: table("t4", "", "198.19.0.4:80")},
	}}
	k := newFakeController(t, newAuthority(t), srv)
	src := startSource(t, k.options())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := src.Watch(ctx)
	defer src.Use("a.b")()
	got := until(t, ch, "with the last table and a.b's endpoints", func(s *discovery.Snapshot) bool {
		_, last := s.Lookup(netip.MustParseAddrPort("198.19.0.4:80"))
		return last && endpointsOf(s, "a.b") == "198.18.0.3:80"
	})
	if got.Revision() != "t4" {
		t.Errorf("table version %q, want t4", got.Revision())
	}

	// The proxy answered: NACKs for 2, 3 and 5 saying what it kept, and an ACK of the last
	// (ACKs coalesce: one acknowledges every response before it).
	nacks := map[string]*discoverypb.DiscoveryRequest{}
	acked := map[string]bool{}
	for deadline := time.After(20 * time.Second); len(nacks) < 3 || !acked["7"]; {
		select {
		case r := <-srv.requests:
			switch {
			case r.ErrorDetail != "":
				nacks[r.ResponseNonce] = r
			case r.ResponseNonce != "":
				acked[r.ResponseNonce] = true
			}
		case <-deadline:
			t.Fatalf("answers so far: nacks %v, acks %v", nacks, acked)
		}
	}
	for nonce, want := range map[string]string{"2": "table.services[0].addresses[0]", "3": "not the version held", "5": "not \"cluster.local\""} {
		r := nacks[nonce]
		if r == nil || !strings.Contains(r.ErrorDetail, want) {
			t.Errorf("NACK of %s: %v, want one saying %q", nonce, r, want)
		}
	}
	if r := nacks["2"]; r != nil && r.TableVersion != "t1" {
		t.Errorf("the NACK of a table says the proxy holds %q, want t1", r.TableVersion)
	}
	if r := nacks["5"]; r != nil && (len(r.Subscribe) != 1 || r.Subscribe[0].Version != "e1") {
		t.Errorf("the NACK of endpoints restates %v, want a.b at e1", r.Subscribe)
	}
	for nonce := range acked {
		if nacks[nonce] != nil {
			t.Errorf("response %s was both acknowledged and refused", nonce)
		}
	}
}

// recorder is a Discovery server that records the authorization metadata of every Stream,
// then sends a table and waits.
type recorder struct {
	discoverypb.UnimplementedDiscoveryServer
	mu   sync.Mutex
	seen []string
}

func (r *recorder) Stream(stream discoverypb.Discovery_StreamServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	r.mu.Lock()
	r.seen = append(r.seen, strings.Join(md.Get("authorization"), ","))
	r.mu.Unlock()
	if err := stream.Send(&discoverypb.DiscoveryResponse{Nonce: "1", Table: table("1", "", "198.19.0.1:80")}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (r *recorder) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

func TestControllerSourceSendsTheTokenReadAtEachAttempt(t *testing.T) {
	rec := &recorder{}
	k := newFakeController(t, newAuthority(t), rec)
	startSource(t, k.options())
	if got := rec.calls(); len(got) != 1 || got[0] != "Bearer "+stockwebToken {
		t.Fatalf("authorization sent: %q, want one \"Bearer <the file's token>\"", got)
	}

	// The token is rotated on disk; the next attempt, after the controller comes back, sends it.
	rotated := "0f4e2a9c8b7d6e5f4a3b2c1d0e9f8a7b"
	replaceFile(t, k.token, rotated+"\n")
	k.stop()
	k.start()
	deadline := time.Now().Add(20 * time.Second)
	for len(rec.calls()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the source did not reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := rec.calls()[1]; got != "Bearer "+rotated {
		t.Errorf("after rotation the source sent %q, want the new token", got)
	}
}

func TestStartControllerSaysWhenTheControllerRefusesTheProxy(t *testing.T) {
	k, _ := fileController(t, serviceFile("198.19.0.1:80"))
	write := func(content string) string {
		path := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name      string
		tokenFile string
		wantCode  string
	}{
		{"without a token", "", "Unauthenticated"},
		{"with a token the controller does not know", write("0123456789abcdef0123456789abcdef"), "Unauthenticated"},
		{"with two tokens in the file", write(stockwebToken + "\n" + stockwebToken + "\n"), "holds more than one token"},
		{"with an empty token file", write("\n"), "is empty"},
		{"with a token file that is missing", filepath.Join(t.TempDir(), "missing"), "reading the identity token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := k.options()
			opts.TokenFile = tt.tokenFile
			opts.StartTimeout = 500 * time.Millisecond
			_, err := resolve.StartController(context.Background(), opts)
			if err == nil {
				t.Fatal("started")
			}
			for _, want := range []string{tt.wantCode, "check that the identity token file holds a token"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}
