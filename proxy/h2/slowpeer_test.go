package h2

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/detourmesh/detour/proxy/rawsock"
)

// stuckReader is a raw client that grants the engine every window there is, asks the upstream
// for a 1 GiB server stream, reads until the stream is flowing and then never reads again: a
// peer whose socket the engine fills and can write no more into.
func stuckReader(t *testing.T, rc *rawClient) {
	t.Helper()
	rc.do(func(fr *http2.Framer) error {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: maxWindow})
		return fr.WriteWindowUpdate(0, maxWindow-defaultWindow)
	})
	rc.headers(1, false, ":method", "POST", ":scheme", "http", ":authority", "a", ":path", mServerStream, "content-type", "application/grpc", "te", "trailers")
	req := grpcFrame(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 1024), 1<<20))
	rc.do(func(fr *http2.Framer) error { return fr.WriteData(1, true, req) })
	rc.until("the stream's first DATA", func(f http2.Frame) bool {
		d, ok := f.(*http2.DataFrame)
		return ok && d.StreamID == 1
	})
}

// unaryP99 runs calls sequential unary calls on each of the given client connections at once
// and returns the 99th percentile of their latencies.
func unaryP99(t *testing.T, ccs []*grpc.ClientConn, calls int) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	errs := make(chan error, len(ccs))
	for _, cc := range ccs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := []byte("ping")
			for range calls {
				var out []byte
				t0 := time.Now()
				if err := cc.Invoke(ctx, mUnary, &in, &out); err != nil {
					errs <- err
					return
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a call beside the stuck client failed: %v", err)
	}
	slices.Sort(lat)
	return lat[len(lat)*99/100]
}

// TestClientThatStopsReadingLeavesOthersFast is issue 9's acceptance test for B.2: with the
// default timeouts and one upstream connection per endpoint (as inbound uses), a client that
// stops reading its response does not delay the other clients' calls on the same upstream
// connection: their p99 stays under 100 ms while the stuck client's output cannot drain (before
// the fix, the upstream's read loop blocked in the write to the stuck client, and every call
// waited for WriteTimeout, 15 s).
func TestClientThatStopsReadingLeavesOthersFast(t *testing.T) {
	ts := startGRPCServer(t, "a")
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ts.addr), MaxConnsPerEndpoint: 1, Logger: discardLogger()})
	ccs := make([]*grpc.ClientConn, 4)
	for i := range ccs {
		ccs[i] = dialGRPC(t, addr)
	}
	unaryP99(t, ccs, 1) // every client connected, the upstream connection up

	stuckReader(t, dialRaw(t, addr))
	waitFor(t, "the engine to be unable to write to the stuck client", func() bool { return stalledClients(srv) == 1 })
	p99 := unaryP99(t, ccs, 250)
	t.Logf("p99 of 1000 calls beside a stuck client: %v", p99)
	if p99 > 100*time.Millisecond {
		t.Errorf("p99 %v beside a client that stopped reading; want under 100ms", p99)
	}
	if n := stalledClients(srv); n != 1 {
		t.Fatalf("%d client connections stalled after the calls, want the stuck one still stalled (else the calls proved nothing)", n)
	}
	if n := ts.conns.Load(); n != 1 {
		t.Errorf("the upstream accepted %d connections, want 1 shared by every client", n)
	}
}

// TestClientThatStopsReadingOverTLSLeavesOthersFast is the same over TLS client connections,
// whose writes cannot be tried without blocking: TLS over a raw socket, as the mesh's inbound
// side serves them (proxy/tcp.go).
func TestClientThatStopsReadingOverTLSLeavesOthersFast(t *testing.T) {
	ts := startGRPCServer(t, "a")
	cert, pool := selfSignedCert(t, "engine.test")
	addr, srv := startTLSProxy(t, Config{Router: newRecorder(ts.addr), MaxConnsPerEndpoint: 1, Logger: discardLogger()}, cert)
	clientTLS := &tls.Config{RootCAs: pool, ServerName: "engine.test", NextProtos: []string{"h2"}}
	ccs := make([]*grpc.ClientConn, 4)
	for i := range ccs {
		cc, err := grpc.NewClient("passthrough:///"+addr.String(), grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		ccs[i] = cc
	}
	unaryP99(t, ccs, 1)

	tc, err := tls.Dial("tcp", addr.String(), clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	stuckReader(t, rawClientOn(t, tc))
	waitFor(t, "the engine to be unable to write to the stuck client", func() bool { return stalledClients(srv) == 1 })
	p99 := unaryP99(t, ccs, 250)
	t.Logf("p99 of 1000 calls over TLS beside a stuck TLS client: %v", p99)
	if p99 > 100*time.Millisecond {
		t.Errorf("p99 %v beside a TLS client that stopped reading; want under 100ms", p99)
	}
	if n := stalledClients(srv); n != 1 {
		t.Fatalf("%d client connections stalled after the calls, want the stuck one still stalled", n)
	}
	if n := ts.conns.Load(); n != 1 {
		t.Errorf("the upstream accepted %d connections, want 1 shared by every client", n)
	}
}

// TestUpstreamThatStopsReadingLeavesTheClientsOtherStreamsFast: a client uploading to an
// upstream that stopped reading (it granted every window, so only its socket pushes back) keeps
// getting answers on its other streams, sent to a healthy upstream over the same client
// connection (before the fix, the client's read loop blocked in the write to the stuck upstream
// and read nothing more from the client).
func TestUpstreamThatStopsReadingLeavesTheClientsOtherStreamsFast(t *testing.T) {
	healthy := startGRPCServer(t, "healthy")
	stuck := stuckUpstream(t)
	router := RouterFunc(func(_ netip.AddrPort, h *Head) (Route, error) {
		if h.Path == mClientStream {
			return Route{Addr: stuck.addr}, nil
		}
		return Route{Addr: healthy.addr}, nil
	})
	addr, srv, _ := startProxy(t, Config{Router: router, Logger: discardLogger()})
	cc := dialGRPC(t, addr)
	unaryP99(t, []*grpc.ClientConn{cc}, 1)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up, err := cc.NewStream(ctx, descClient, mClientStream)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		msg := make([]byte, 1<<20)
		for range 256 { // far more than the stuck upstream's socket buffers take
			if up.SendMsg(&msg) != nil {
				return
			}
		}
	}()
	waitFor(t, "the engine to be unable to write to the stuck upstream", func() bool { return stalledUpstreams(srv) == 1 })
	p99 := unaryP99(t, []*grpc.ClientConn{cc}, 100)
	t.Logf("p99 of 100 calls beside an upload to a stuck upstream: %v", p99)
	if p99 > 100*time.Millisecond {
		t.Errorf("p99 %v beside an upload to an upstream that stopped reading; want under 100ms", p99)
	}
	if n := stalledUpstreams(srv); n != 1 {
		t.Fatalf("%d upstream connections stalled after the calls, want the stuck one still stalled", n)
	}
}

// TestJanitorKeepsTimeWhileAPeerIsStuck: the janitor pings an upstream whose socket takes no
// more bytes, and goes on enforcing the other connections' timeouts (before the fix it blocked
// in that PING's write, and no connection anywhere timed out any more).
func TestJanitorKeepsTimeWhileAPeerIsStuck(t *testing.T) {
	stuck := stuckUpstream(t)
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(stuck.addr), Logger: discardLogger(),
		UpstreamKeepalive: 300 * time.Millisecond, IdleTimeout: 200 * time.Millisecond})
	cc := dialGRPC(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up, err := cc.NewStream(ctx, descClient, mClientStream)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		msg := make([]byte, 1<<20)
		for range 256 {
			if up.SendMsg(&msg) != nil {
				return
			}
		}
	}()
	waitFor(t, "the janitor to ping the stuck upstream", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for u := range srv.ups {
			if u.pingAt.Load() != 0 && u.stalled.Load() != 0 {
				return true
			}
		}
		return false
	})
	rc := dialRaw(t, addr) // idle from now on: the janitor must send it GOAWAY
	g, closed := rc.closedAfter()
	if g == nil || !closed {
		t.Fatalf("an idle client beside a stuck upstream: GOAWAY %v, closed %v; want the idle timeout's GOAWAY and close", g, closed)
	}
}

// TestOutputQueueBoundClosesAPeerThatOnlyTakes: a client that stopped reading but keeps sending
// PINGs makes the engine queue a PING ack for each; past the queue's bound (maxQueued) the
// connection is closed at once rather than at WriteTimeout (15 s), so its memory stays bounded.
func TestOutputQueueBoundClosesAPeerThatOnlyTakes(t *testing.T) {
	ts := startGRPCServer(t, "a")
	addr, srv, _ := startProxy(t, Config{Router: newRecorder(ts.addr), Logger: discardLogger()})
	rc := dialRaw(t, addr)
	stuckReader(t, rc)
	waitFor(t, "the engine to be unable to write to the stuck client", func() bool { return stalledClients(srv) == 1 })
	const pings = 2 * maxQueued / (9 + 8) // twice the bound in acks
	go rc.do(func(fr *http2.Framer) error {
		for i := range pings {
			if err := fr.WritePing(false, [8]byte{byte(i)}); err != nil {
				return err // the engine closed the connection
			}
		}
		return nil
	})
	waitFor(t, "the engine to close the client over its queue bound", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.clients) == 0
	})
}

// stuckUpstream is an HTTP/2 server that grants the engine every window, reads the first
// request's HEADERS and then nothing more.
func stuckUpstream(t *testing.T) *rawUpstream {
	stop := make(chan struct{})
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		sc.mu.Lock()
		sc.fr.WriteWindowUpdate(0, maxWindow-defaultWindow)
		sc.mu.Unlock()
		<-stop
	})
	ru.settings = []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: maxWindow}}
	t.Cleanup(func() { close(stop) }) // runs before startRawUpstream's cleanup waits for handle
	return ru
}

// stalledFor is how long a connection's writer must have waited for its socket, without
// progress, to count as stalled: far longer than any write to a peer that reads (a TLS
// connection's writer runs for every flush).
const stalledFor = 100 * time.Millisecond

func isStalled(srv *Server, c *conn) bool {
	st := c.stalled.Load()
	return st != 0 && time.Duration(srv.now()-st) > stalledFor
}

// stalledClients counts the client connections whose writer waits for their socket.
func stalledClients(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	n := 0
	for cc := range srv.clients {
		if isStalled(srv, &cc.conn) {
			n++
		}
	}
	return n
}

// stalledUpstreams counts the upstream connections whose writer waits for their socket.
func stalledUpstreams(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	n := 0
	for u := range srv.ups {
		if isStalled(srv, &u.conn) {
			n++
		}
	}
	return n
}

// startTLSProxy runs an engine whose client connections are TLS over a raw socket.
func startTLSProxy(t testing.TB, cfg Config, cert tls.Certificate) (netip.AddrPort, *Server) {
	t.Helper()
	srv := NewServer(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(rawsock.Wrap(c), serverTLS)
				if tc.Handshake() != nil {
					tc.Close()
					return
				}
				srv.ServeConn(context.Background(), tc, addr)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		srv.Close()
	})
	return addr, srv
}

// selfSignedCert makes a certificate for name and the pool that trusts it.
func selfSignedCert(t testing.TB, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// rawClientOn is dialRaw over a connection the caller made (TLS).
func rawClientOn(t *testing.T, c net.Conn) *rawClient {
	rc := &rawClient{t: t, c: c, log: &frameLog{}}
	rc.log.attach(t, "client")
	rc.fr = http2.NewFramer(c, c)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.fr.MaxHeaderListSize = 1 << 20
	rc.enc = hpack.NewEncoder(&rc.encBuf)
	c.Write([]byte(http2.ClientPreface))
	rc.fr.WriteSettings()
	return rc
}
