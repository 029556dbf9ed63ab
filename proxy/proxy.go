// Package proxy is Detour's sidecar: it accepts the connections init redirected to it,
// recovers their original destinations, detects their protocol and hands each to the forwarder
// that fits: HTTP/2 and gRPC balanced per stream, HTTP/1 per request, everything else relayed
// byte for byte. A destination discovery does not know leaves the proxy untouched.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/detourmesh/detour/proxy/admin"
	"github.com/detourmesh/detour/proxy/balance"
	"github.com/detourmesh/detour/proxy/discovery"
	"github.com/detourmesh/detour/proxy/h2"
	"github.com/detourmesh/detour/proxy/http1"
	"github.com/detourmesh/detour/proxy/identity"
	"github.com/detourmesh/detour/proxy/metrics"
	"github.com/detourmesh/detour/proxy/mtls"
)

// DefaultOpaquePorts are ports whose servers speak first (SMTP, MySQL, PostgreSQL, Redis,
// memcached, ...): connections to them skip protocol detection, which would otherwise wait for
// a client that is itself waiting.
var DefaultOpaquePorts = []uint16{25, 587, 3306, 4444, 4567, 4568, 5432, 6379, 9300, 11211}

// Config configures a Proxy. Zero durations take the documented defaults.
type Config struct {
	OutboundPort, InboundPort, AdminPort uint16
	// Discovery says which destinations are services and where their endpoints are. Nil means
	// none: every outbound connection is relayed to its original destination.
	Discovery discovery.Source
	// OpaquePorts skip detection and are relayed as TCP, inbound and outbound.
	OpaquePorts []uint16
	// DetectTimeout bounds the wait for a client's first bytes; default 1 s. A client still
	// silent then is relayed as opaque TCP, and the first such timeout per port is logged.
	DetectTimeout time.Duration
	// DrainTimeout is how long the outbound side keeps serving after shutdown begins, while
	// the inbound side drains; default 30 s.
	DrainTimeout time.Duration
	Logger       *slog.Logger

	// Identity is the proxy's workload identity for mutual TLS with other meshed proxies. Nil
	// means none: the proxy refuses to reach endpoints discovery says are meshed (it never
	// downgrades them to plaintext) and refuses mesh TLS arriving inbound.
	Identity identity.Source
	// Policy decides which clients may reach which inbound ports (permissive by default).
	Policy mtls.Policy
	// Debug adds documents under /debug/ on the admin port, e.g. "identity".
	Debug map[string]func() any
}

// Proxy is one sidecar. Run it once.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics.Metrics
	routes  *routes
	conns   *connTable
	local   *localAddrs
	h2out   *h2.Server
	h2in    *h2.Server
	h1out   *http1.Server
	h1in    *http1.Server
	dialer  net.Dialer
	// dialMesh dials an outbound endpoint for opaque TCP: mesh TLS (ALPN detour/tcp) when
	// discovery says it is meshed, plain TCP otherwise.
	dialMesh  func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	serverTLS *tls.Config // nil without an identity
	denyLog   sync.Map    // "port peer" -> time of the last denial logged

	ready         atomic.Bool
	draining      atomic.Bool
	stop          chan struct{} // closed when shutdown begins
	stopOnce      sync.Once
	loggedTimeout sync.Map // port -> struct{}: detection timeouts already logged
}

// New returns a proxy for cfg.
func New(cfg Config) *Proxy {
	if cfg.DetectTimeout <= 0 {
		cfg.DetectTimeout = time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Proxy{
		cfg:     cfg,
		log:     cfg.Logger,
		metrics: metrics.New(),
		routes:  newRoutes(balance.Options{}),
		conns:   newConnTable(),
		local:   &localAddrs{},
		dialer:  net.Dialer{Timeout: 5 * time.Second},
		stop:    make(chan struct{}),
	}
	dialH2, dialH1 := p.plainOnly, p.plainOnly
	p.dialMesh = p.plainOnly
	if cfg.Identity != nil {
		p.serverTLS = mtls.ServerConfig(cfg.Identity, []string{mtls.ALPNH2, mtls.ALPNHTTP1, mtls.ALPNTCP})
		dialH2 = mtls.Dialer(cfg.Identity, p.routes.identity, mtls.ALPNH2)
		dialH1 = mtls.Dialer(cfg.Identity, p.routes.identity, mtls.ALPNHTTP1)
		p.dialMesh = mtls.Dialer(cfg.Identity, p.routes.identity, mtls.ALPNTCP)
	}
	p.h2out = h2.NewServer(h2.Config{Router: h2.RouterFunc(p.routeH2Outbound), Dial: dialH2, Logger: cfg.Logger,
		OnPanic: func(h2.Panic) { p.metrics.Panicked(metrics.Outbound, "h2") }})
	p.h2in = h2.NewServer(h2.Config{Router: h2.RouterFunc(p.routeH2Inbound), Logger: cfg.Logger, MaxConnsPerEndpoint: 1,
		OnPanic: func(h2.Panic) { p.metrics.Panicked(metrics.Inbound, "h2") }})
	p.h1out = http1.NewServer(http1.Config{Router: http1.RouterFunc(p.routeH1Outbound), Dial: dialH1, Logger: cfg.Logger})
	p.h1in = http1.NewServer(http1.Config{Router: http1.RouterFunc(p.routeH1Inbound), Logger: cfg.Logger})
	return p
}

// Shutdown begins a graceful shutdown, as SIGTERM does; Run returns when it is over.
func (p *Proxy) Shutdown() { p.stopOnce.Do(func() { close(p.stop) }) }

// Metrics exposes the proxy's metrics registry (tests and benchmarks read it).
func (p *Proxy) Metrics() *metrics.Metrics { return p.metrics }

type listener struct {
	net.Listener
	direction string
}

// Run listens, serves until ctx ends or Shutdown is called, then drains: the inbound side stops
// accepting and sends GOAWAY at once, the outbound side keeps serving the app until the drain
// timeout. It returns nil after a clean drain.
func (p *Proxy) Run(ctx context.Context) error {
	var outbound, inbound []net.Listener
	closeAll := func() {
		for _, l := range slices.Concat(outbound, inbound) {
			l.Close()
		}
	}
	var err error
	if outbound, err = listenBoth(p.cfg.OutboundPort); err != nil {
		return fmt.Errorf("outbound listener: %w", err)
	}
	if inbound, err = listenBoth(p.cfg.InboundPort); err != nil {
		closeAll()
		return fmt.Errorf("inbound listener: %w", err)
	}
	adminLns, err := listenBoth(p.cfg.AdminPort)
	if err != nil {
		closeAll()
		return fmt.Errorf("admin listener: %w", err)
	}
	adminSrv := admin.NewServer(admin.Handler(admin.Config{
		Registry: p.metrics.Registry,
		Ready:    p.readiness,
		Debug:    p.debugDocs(),
		Shutdown: p.Shutdown,
		Logger:   p.log,
	}))

	// serveCtx ends only when the proxy exits: connections outlive the start of a drain.
	serveCtx, endServe := context.WithCancel(context.Background())
	defer endServe()
	var g errgroup.Group
	for _, l := range adminLns {
		g.Go(func() error {
			if err := adminSrv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin server: %w", err)
			}
			return nil
		})
	}
	if p.cfg.Discovery != nil {
		snaps := p.cfg.Discovery.Watch(serveCtx)
		first, ok := <-snaps
		if ok {
			p.update(first)
		}
		g.Go(func() error {
			for s := range snaps {
				p.update(s)
				p.log.Info("discovery updated", "revision", s.Revision(), "services", len(s.Services()))
			}
			return nil
		})
	} else {
		p.routes.update(discovery.NewSnapshot("cluster.local", "none", nil))
	}
	var conns sync.WaitGroup
	for _, l := range slices.Concat(tag(outbound, metrics.Outbound), tag(inbound, metrics.Inbound)) {
		g.Go(func() error { return p.accept(serveCtx, l, &conns) })
	}
	p.ready.Store(true)
	p.log.Info("proxy ready", "outbound", p.cfg.OutboundPort, "inbound", p.cfg.InboundPort, "admin", p.cfg.AdminPort)

	select {
	case <-ctx.Done():
	case <-p.stop:
	}
	p.draining.Store(true)
	p.log.Info("draining", "timeout", p.cfg.DrainTimeout.String())
	for _, l := range inbound {
		l.Close()
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), p.cfg.DrainTimeout)
	defer cancel()
	var drain errgroup.Group
	drain.Go(func() error { return p.h2in.Shutdown(drainCtx) })
	drain.Go(func() error { return p.h1in.Shutdown(drainCtx) })
	if err := drain.Wait(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		p.log.Warn("draining inbound", "err", err)
	}
	<-drainCtx.Done()

	for _, l := range outbound {
		l.Close()
	}
	adminSrv.Close()
	p.h2out.Close()
	p.h2in.Close()
	p.h1out.Close()
	p.h1in.Close()
	endServe() // ends the discovery watch and the forwarders
	p.conns.closeAll()
	err = g.Wait()
	conns.Wait()
	p.log.Info("proxy stopped")
	return err
}

// update installs a discovery snapshot and opens connections ahead of time to the endpoints of
// services declared HTTP/2, so no endpoint of a burst waits for a dial its peers did not.
func (p *Proxy) update(s *discovery.Snapshot) {
	// Pooled connections were checked against what their endpoint had to prove then.
	changed, reidentified := p.routes.update(s)
	for _, addr := range changed {
		p.h2out.Retire(addr)
		p.h1out.Retire(addr)
	}
	for _, addr := range reidentified {
		p.log.Info("endpoint identity changed: pooled connections retired", "endpoint", addr.String())
	}
	for _, svc := range s.Services() {
		if svc.Protocol == discovery.ProtocolHTTP2 {
			p.warm(svc)
		}
	}
}

func (p *Proxy) warm(svc *discovery.Service) {
	for _, ep := range svc.Endpoints {
		p.h2out.Warm(ep.Addr)
	}
}

func tag(lns []net.Listener, direction string) []listener {
	out := make([]listener, len(lns))
	for i, l := range lns {
		out[i] = listener{l, direction}
	}
	return out
}

func (p *Proxy) readiness() error {
	switch {
	case p.draining.Load():
		return errors.New("draining")
	case !p.ready.Load():
		return errors.New("starting")
	}
	if p.cfg.Identity != nil {
		if _, err := p.cfg.Identity.Certificate(); err != nil {
			return fmt.Errorf("waiting for a workload certificate: %w", err)
		}
	}
	return nil
}

func (p *Proxy) debugDocs() map[string]func(*http.Request) any {
	docs := map[string]func(*http.Request) any{
		"endpoints":   func(*http.Request) any { return p.routes.doc() },
		"connections": func(*http.Request) any { return p.conns.doc() },
	}
	for name, fn := range p.cfg.Debug {
		docs[name] = func(*http.Request) any { return fn() }
	}
	return docs
}

// plainOnly dials plain TCP, and refuses an endpoint discovery says is meshed: without an
// identity the proxy cannot prove itself or check the endpoint, and it never downgrades.
func (p *Proxy) plainOnly(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	if id, meshed := p.routes.identity(addr); meshed {
		return nil, fmt.Errorf("endpoint %s is meshed (%s) but this proxy has no workload identity to speak mutual TLS with", addr, id)
	}
	return p.dialer.DialContext(ctx, "tcp", addr.String())
}

// listenBoth listens on port for IPv4 and, where the namespace has it, IPv6.
func listenBoth(port uint16) ([]net.Listener, error) {
	ln4, err := net.Listen("tcp4", netip.AddrPortFrom(netip.IPv4Unspecified(), port).String())
	if err != nil {
		return nil, err
	}
	lns := []net.Listener{ln4}
	if ln6, err := net.Listen("tcp6", netip.AddrPortFrom(netip.IPv6Unspecified(), port).String()); err == nil {
		lns = append(lns, ln6)
	}
	return lns, nil
}

func (p *Proxy) accept(ctx context.Context, l listener, conns *sync.WaitGroup) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			p.log.Warn("accept", "direction", l.direction, "err", err)
			time.Sleep(50 * time.Millisecond) // e.g. out of file descriptors: do not spin
			continue
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			p.handle(ctx, c.(*net.TCPConn), l.direction)
		}()
	}
}
