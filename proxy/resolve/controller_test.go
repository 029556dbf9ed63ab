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
	return newFakeController(t, authority, srv), path
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

// next receives from a Watch channel until a snapshot has vip; the limit bounds a failing test.
func next(t *testing.T, ch <-chan *discovery.Snapshot, vip string) *discovery.Snapshot {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed")
			}
			if _, found := s.Lookup(netip.MustParseAddrPort(vip)); found {
				return s
			}
		case <-deadline:
			t.Fatalf("no snapshot with %s", vip)
		}
	}
}

func TestControllerSourceFollowsTheControllersFile(t *testing.T) {
	k, path := fileController(t, serviceFile("198.19.0.1:80"))
	src := startSource(t, k.options())
	if _, ok := src.Snapshot().Lookup(netip.MustParseAddrPort("198.19.0.1:80")); !ok {
		t.Fatalf("the first snapshot is not the file's")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := src.Watch(ctx)
	next(t, ch, "198.19.0.1:80")
	replaceFile(t, path, serviceFile("198.19.0.2:80"))
	next(t, ch, "198.19.0.2:80")
}

func TestControllerSourceKeepsTheLastGoodSnapshotWhileTheControllerIsAway(t *testing.T) {
	k, path := fileController(t, serviceFile("198.19.0.1:80"))
	src := startSource(t, k.options())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := src.Watch(ctx)
	before := next(t, ch, "198.19.0.1:80")

	k.stop()
	// The file changes while no proxy can hear about it.
	replaceFile(t, path, serviceFile("198.19.0.2:80"))
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
	select {
	case s := <-ch:
		t.Fatalf("a snapshot was delivered while the controller was away: %s", s.Revision())
	default:
	}

	k.start()
	after := next(t, ch, "198.19.0.2:80")
	if after.Revision() == before.Revision() {
		t.Errorf("revision did not change")
	}
	if err := src.Err(); err != nil {
		t.Errorf("Err() = %v after the controller came back", err)
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
	next(t, ch, "198.19.0.1:80")
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
	for _, want := range []string{"no discovery snapshot from the controller at " + addr + " within 300ms", "connection refused", "check that the controller runs"} {
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

// scripted is a Discovery server that sends the snapshots it is given, in order, then waits.
type scripted struct {
	discoverypb.UnimplementedDiscoveryServer
	snaps []*discoverypb.Snapshot
}

func (s *scripted) Watch(_ *discoverypb.WatchRequest, stream discoverypb.Discovery_WatchServer) error {
	for _, pb := range s.snaps {
		if err := stream.Send(pb); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

func TestControllerSourceIgnoresAnInvalidSnapshot(t *testing.T) {
	svc := func(vip string) *discoverypb.Snapshot {
		return &discoverypb.Snapshot{Revision: vip, TrustDomain: "cluster.local",
			Services: []*discoverypb.Service{{Name: "a.b", Addresses: []string{vip}}}}
	}
	k := newFakeController(t, newAuthority(t), &scripted{snaps: []*discoverypb.Snapshot{
		svc("198.19.0.1:80"), svc("198.19.0.2:0"), svc("198.19.0.3:80"),
	}})
	src := startSource(t, k.options())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := src.Watch(ctx)
	// The port-0 snapshot is refused, the next good one is taken.
	got := next(t, ch, "198.19.0.3:80")
	if got.Revision() != "198.19.0.3:80" {
		t.Errorf("revision %q", got.Revision())
	}
}

// recorder is a Discovery server that records the authorization metadata of every Watch, then
// sends one snapshot and waits.
type recorder struct {
	discoverypb.UnimplementedDiscoveryServer
	mu   sync.Mutex
	seen []string
}

func (r *recorder) Watch(_ *discoverypb.WatchRequest, stream discoverypb.Discovery_WatchServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	r.mu.Lock()
	r.seen = append(r.seen, strings.Join(md.Get("authorization"), ","))
	r.mu.Unlock()
	if err := stream.Send(&discoverypb.Snapshot{Revision: "1", TrustDomain: "cluster.local"}); err != nil {
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
