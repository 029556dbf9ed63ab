package telemetry

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/telemetrypb"
	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/controller/identity"
	"github.com/detourmesh/detour/proxy/metrics"
	"github.com/detourmesh/detour/proxy/report"
	"github.com/detourmesh/detour/spiffe"
)

const webToken = "0123456789abcdef0123456789abcdef"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serve runs the Telemetry service as the controller does (TLS, callers proved by a bootstrap
// token) and returns a client connection as a proxy holds it, and the store.
func serve(t *testing.T) (*grpc.ClientConn, *Store) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.Init(filepath.Join(t.TempDir(), "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := identity.ParseTokens([]byte(webToken+" "+webID+"\n"), td)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := authority.ServerTLS(spiffe.ControllerID(td), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	store := NewStore(0, nil)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	telemetrypb.RegisterTelemetryServer(gs, NewServer(store, identity.NewAuthenticator(authority, tokens), quiet()))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	roots := x509.NewCertPool()
	roots.AddCert(authority.TrustAnchor())
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(spiffe.ClientTLS(roots, spiffe.ControllerID(td), nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, store
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func TestClaimKeyIsTheIdentityPackages(t *testing.T) {
	if claimKey != identity.ClaimKey {
		t.Fatalf("claimKey %q, identity.ClaimKey %q", claimKey, identity.ClaimKey)
	}
}

// TestProxyReportsReachStat runs a proxy's reporter (proxy/report) over real gRPC and TLS
// against the service, and finds the requests its metrics counted in Stat, named by the pod.
func TestProxyReportsReachStat(t *testing.T) {
	conn, store := serve(t)
	m := metrics.New()
	route := m.Route(metrics.Outbound, "stockdata.stocks", netip.MustParseAddrPort("198.18.0.3:8080"), stockID)
	route.Observe(200, 0, false, time.Millisecond) // before reporting: not news
	ctx, cancel := context.WithCancel(withToken(context.Background(), webToken))
	done := make(chan error, 1)
	go func() {
		done <- report.Run(ctx, report.Config{Conn: conn, Gatherer: m.Registry, Interval: 20 * time.Millisecond, Logger: quiet(),
			Proxy: &telemetrypb.Proxy{Identity: webID, Pod: "stockweb-0", Namespace: "stocks", Addresses: []string{"198.18.0.2"}}})
	}()
	t.Cleanup(func() { cancel(); <-done })
	// Its first report comes after its baseline: from then on every request is news.
	for start := time.Now(); store.Stats().Reports == 0; time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("no report within 10s")
		}
	}
	for range 7 {
		route.Observe(200, 0, false, time.Millisecond)
	}
	route.Observe(200, 14, true, time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for {
		rows := stat(t, store, Query{Resource: Resource{Kind: KindService}})
		r := rows["stockdata.stocks"]
		if r.Requests == 8 {
			near(t, "success", r.SuccessRate, 7.0/8)
			break
		}
		if r.Requests > 8 || time.Now().After(deadline) {
			t.Fatalf("stat svc: %+v (store %+v), want the 8 requests counted after reporting started", rows, store.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	pods := stat(t, store, Query{Resource: Resource{Kind: KindPod}})
	if _, ok := pods["stockweb-0"]; !ok {
		t.Errorf("pods %v: want stockweb-0, which reports", pods)
	}
}

// TestFlushSendsTheLastInterval: a proxy that stops serving closes Flush, and the requests it
// counted since its last report reach the controller before Run returns, hours before the next
// tick would have sent them.
func TestFlushSendsTheLastInterval(t *testing.T) {
	conn, store := serve(t)
	m := metrics.New()
	route := m.Route(metrics.Inbound, "stockdata.stocks", netip.MustParseAddrPort("198.18.0.3:8080"), webID)
	flush, baseline := make(chan struct{}), make(chan struct{})
	var once sync.Once
	gatherer := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		defer once.Do(func() { close(baseline) })
		return m.Registry.Gather()
	})
	done := make(chan error, 1)
	go func() {
		done <- report.Run(withToken(context.Background(), webToken), report.Config{Conn: conn, Gatherer: gatherer, Interval: time.Hour, Logger: quiet(),
			Proxy: &telemetrypb.Proxy{Identity: webID, Pod: "stockdata-0", Namespace: "stocks", Addresses: []string{"198.18.0.3"}}, Flush: flush})
	}()
	// Run takes its baseline first (requests counted before it are not news): then five.
	<-baseline
	for range 5 {
		route.Observe(200, 0, true, time.Millisecond)
	}
	close(flush)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after Flush: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of Flush")
	}
	pods := stat(t, store, Query{Resource: Resource{Kind: KindPod}})
	if r := pods["stockdata-0"]; r.Requests != 5 {
		t.Fatalf("after the flush the controller counts %d requests of stockdata-0 (pods %v), want the 5 of its last interval", r.Requests, pods)
	}
}

func TestReportsAreRefusedWithoutProofOrUnderAnotherIdentity(t *testing.T) {
	conn, store := serve(t)
	client := telemetrypb.NewTelemetryClient(conn)
	send := func(ctx context.Context, id string) error {
		st, err := client.Report(ctx)
		if err != nil {
			return err
		}
		st.Send(&telemetrypb.ReportRequest{Proxy: &telemetrypb.Proxy{Identity: id, Pod: "p"}, LatencyBounds: Bounds,
			Routes: []*telemetrypb.Route{{Authority: "a", Endpoint: "198.18.0.9:80", Requests: 1}}})
		_, err = st.CloseAndRecv()
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := send(ctx, webID); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no token: %v, want Unauthenticated", err)
	}
	if err := send(withToken(ctx, webToken), stockID); status.Code(err) != codes.PermissionDenied {
		t.Errorf("another identity: %v, want PermissionDenied", err)
	}
	if err := send(withToken(ctx, webToken), webID); err != nil {
		t.Errorf("a proved identity: %v", err)
	}
	if st := store.Stats(); st.Series != 1 {
		t.Errorf("%d series: want only the proved caller's one", st.Series)
	}
}

// TestAReportOfManyRoutesArrivesWhole has a proxy report more busy routes than one message may
// carry: the reporter splits them and the store counts every one.
func TestAReportOfManyRoutesArrivesWhole(t *testing.T) {
	conn, store := serve(t)
	m := metrics.New()
	ctx, cancel := context.WithCancel(withToken(context.Background(), webToken))
	done := make(chan error, 1)
	go func() {
		done <- report.Run(ctx, report.Config{Conn: conn, Gatherer: m.Registry, Interval: 20 * time.Millisecond, Logger: quiet(),
			Proxy: &telemetrypb.Proxy{Identity: webID, Pod: "stockweb-0", Namespace: "stocks"}})
	}()
	t.Cleanup(func() { cancel(); <-done })
	for start := time.Now(); store.Stats().Reports == 0; time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("no report within 10s")
		}
	}
	const routes = maxRoutesPerReport + 100
	for i := range routes {
		ep := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 8080)
		m.Route(metrics.Outbound, "stockdata.stocks", ep, "").Observe(200, 0, false, time.Millisecond)
	}
	for start := time.Now(); store.Stats().Series < routes; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d series of %d after 10s", store.Stats().Series, routes)
		}
	}
	if r := stat(t, store, Query{Resource: Resource{Kind: KindService}})["stockdata.stocks"]; r.Requests != routes {
		t.Errorf("%d requests counted, want %d", r.Requests, routes)
	}
}
