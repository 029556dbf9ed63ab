package discovery

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/proxy/discovery"
	"github.com/detourmesh/detour/proxy/identity"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

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

// serveTLS runs srv's Watch on a loopback TLS port with a controller certificate from a new CA,
// and returns a client that verifies it as a proxy does.
func serveTLS(t *testing.T, srv *Server) discoverypb.DiscoveryClient {
	t.Helper()
	authority, err := ca.Init(filepath.Join(t.TempDir(), "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := authority.ServerTLS(identity.ControllerID(td), time.Hour)
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
	roots := x509.NewCertPool()
	roots.AddCert(authority.TrustAnchor())
	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLS(roots, identity.ControllerID(td), nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoverypb.NewDiscoveryClient(conn)
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
	srv := NewServer(file, quiet())
	runServer(t, srv)
	client := serveTLS(t, srv)

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
			stream, err := client.Watch(ctx, &discoverypb.WatchRequest{Identity: "spiffe://cluster.local/ns/web/sa/stockweb", Targets: tt.targets})
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
		stream, err := client.Watch(ctx, &discoverypb.WatchRequest{})
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
	srv := NewServer(src, quiet())
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

	ctx, cancel := context.WithCancel(context.Background())
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
	srv := NewServer(src, quiet())
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { srv.Run(ctx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran })
	stream := &slowStream{ctx: context.Background(), release: make(chan struct{}), sent: make(chan *discoverypb.Snapshot, 1)}
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
