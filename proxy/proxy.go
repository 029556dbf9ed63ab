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

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/proxy/admin"
	"github.com/detourmesh/detour/proxy/balance"
	"github.com/detourmesh/detour/proxy/h2"
	"github.com/detourmesh/detour/proxy/http1"
	"github.com/detourmesh/detour/proxy/identity"
	"github.com/detourmesh/detour/proxy/metrics"
	"github.com/detourmesh/detour/proxy/mtls"
	"github.com/detourmesh/detour/proxy/tap"
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
	// InboundLoopbackPorts are inbound ports forwarded to the application on 127.0.0.1 instead
	// of the pod address the client dialled: for applications that listen on loopback only and
	// are meant to be reached from other pods. Every other port's loopback stays private.
	InboundLoopbackPorts []uint16
	// DetectTimeout bounds the wait for a client's first bytes; default 1 s. A client still
	// silent then is relayed as opaque TCP, and the first such timeout per port is logged.
	DetectTimeout time.Duration
	// DrainTimeout is how long the outbound side keeps serving after shutdown begins, while
	// the inbound side drains, at most; the drain ends sooner when no client connection is
	// left. Default 30 s.
	DrainTimeout time.Duration
	// ResolveTimeout bounds the wait of the first connection to a service whose endpoints
	// discovery has not given yet (a discovery.Subscriber resolves them on first use); default
	// 2 s. Past it the connection is served anyway: its HTTP requests fail with 503 (gRPC
	// UNAVAILABLE) until the endpoints arrive, an opaque connection is closed. It is never sent
	// to its original destination instead: that would leave the mesh (and its mutual TLS).
	ResolveTimeout time.Duration
	Logger         *slog.Logger

	// MetricsRetain is how long the metric series of an endpoint gone from discovery are kept
	// (so a scrape sees their last values) before they are deleted: every rollout's pod
	// addresses would otherwise stay in /metrics for good. Default 10 minutes, as linkerd2-proxy
	// keeps idle series.
	MetricsRetain time.Duration
	// MaxConnections caps the client connections served at once, both directions together;
	// past it a new one is closed at accept (reset), counted and logged at most every 10 s.
	// Zero: DefaultMaxConnections().
	MaxConnections int

	// Identity is the proxy's workload identity for mutual TLS with other meshed proxies. Nil
	// means none: the proxy refuses to reach endpoints discovery says are meshed (it never
	// downgrades them to plaintext) and refuses mesh TLS arriving inbound.
	Identity identity.Source
	// Policy decides which clients may reach which inbound ports (permissive by default).
	Policy mtls.Policy
	// Debug adds documents under /debug/ on the admin port, e.g. "identity".
	Debug map[string]func() any
	// Pod names the workload the proxy serves, for /debug/proxy and `detour debug pods`; empty
	// when not known (the Kubernetes injector sets it from the downward API).
	Pod PodInfo
	// DiscoveryName says where Discovery comes from, e.g. "controller:198.18.0.1:7086".
	DiscoveryName string
	// Zone is the topology zone the proxy runs in; with it, a service whose endpoints all
	// carry zone hints is balanced over those hinted for this zone (discovery.ForZone).
	Zone string
}

// PodInfo names a pod.
type PodInfo struct {
	Name, Namespace string
}

// Proxy is one sidecar. Run it once.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics.Metrics
	routes  *routes
	// subscriber is cfg.Discovery when it resolves services on use (the controller's client).
	subscriber discovery.Subscriber
	conns      *connTable
	live       *liveConns
	local      *localAddrs
	h2out      *h2.Server
	h2in       *h2.Server
	h1out      *http1.Server
	h1in       *http1.Server
	dialer     net.Dialer
	// dialMesh dials an outbound endpoint for opaque TCP: mesh TLS (ALPN detour/tcp) when
	// discovery says it is meshed, plain TCP otherwise.
	dialMesh  func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	serverTLS *tls.Config // nil without an identity
	// loopbackPorts is cfg.InboundLoopbackPorts as a set: looked up per inbound connection.
	loopbackPorts map[uint16]bool
	denyLog       sync.Map // "port peer" -> time of the last denial logged

	// gone holds the endpoints that left discovery and since when, until their metric series
	// are forgotten. goneMu also orders that forgetting with an endpoint coming back.
	goneMu sync.Mutex
	gone   map[netip.AddrPort]time.Time
	// refusedLog rate-limits the log line of connections refused at accept.
	refusedLog sometimes

	ready         atomic.Bool
	discovered    atomic.Bool // a discovery snapshot is in force
	draining      atomic.Bool
	stop          chan struct{} // closed when shutdown begins
	stopOnce      sync.Once
	loggedTimeout sync.Map // port -> struct{}: detection timeouts already logged

	tap       tap.Hub
	started   time.Time
	listeners []listenerDoc             // set by Run before the admin port serves
	updated   atomic.Pointer[time.Time] // when the last discovery snapshot was installed
}

// New returns a proxy for cfg.
func New(cfg Config) *Proxy {
	if cfg.DetectTimeout <= 0 {
		cfg.DetectTimeout = time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MetricsRetain <= 0 {
		cfg.MetricsRetain = 10 * time.Minute
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections()
	}
	p := &Proxy{
		cfg:     cfg,
		log:     cfg.Logger,
		metrics: metrics.New(),
		routes:  newRoutes(balance.Options{}, cfg.Zone),
		conns:   newConnTable(),
		live:    newLiveConns(),
		local:   &localAddrs{},
		dialer:  net.Dialer{Timeout: 5 * time.Second},
		stop:    make(chan struct{}),
		started: time.Now(),

		loopbackPorts: map[uint16]bool{},
		gone:          map[netip.AddrPort]time.Time{},
		refusedLog:    sometimes{every: 10 * time.Second},
	}
	for _, port := range cfg.InboundLoopbackPorts {
		p.loopbackPorts[port] = true
	}
	p.subscriber, _ = cfg.Discovery.(discovery.Subscriber)
	dialH2, dialH1 := p.plainOnly, p.plainOnly
	p.dialMesh = p.plainOnly
	if cfg.Identity != nil {
		p.serverTLS = mtls.ServerConfig(cfg.Identity, []string{mtls.ALPNH2, mtls.ALPNHTTP1, mtls.ALPNTCP})
		dialH2 = mtls.Dialer(cfg.Identity, p.routes.identity, mtls.ALPNH2)
		dialH1 = mtls.Dialer(cfg.Identity, p.routes.identity, mtls.ALPNHTTP1)
		p.dialMesh = mtls.Dialer(cfg.Identity, p.routes.identity, mtls.ALPNTCP)
	}
	p.routes.onEject = func(service string, addr netip.AddrPort, d time.Duration) {
		p.metrics.Ejected(service, addr)
		p.log.Info("endpoint ejected", "service", service, "endpoint", addr, "for", d.Round(time.Millisecond))
	}
	p.routes.build = p.buildRetriers
	p.h2out = h2.NewServer(h2.Config{Router: h2.RouterFunc(p.routeH2Outbound), Dial: dialH2, Logger: cfg.Logger,
		OnPanic:           func(h2.Panic) { p.metrics.Panicked(metrics.Outbound, "h2") },
		OnUpstreamFailure: func(addr netip.AddrPort, _ error) { p.routes.ejectEverywhere(addr) },
		// Meshed endpoints are Detour proxies, which take frequent pings: a black-holed one is
		// found in seconds.
		PeerKeepalive: func(addr netip.AddrPort) bool { _, ok := p.routes.identity(addr); return ok }})
	p.h2in = h2.NewServer(h2.Config{Router: h2.RouterFunc(p.routeH2Inbound), Logger: cfg.Logger, MaxConnsPerEndpoint: 1,
		OnPanic: func(h2.Panic) { p.metrics.Panicked(metrics.Inbound, "h2") }})
	// A failed HTTP/1 dial marks the endpoint down for every pick, as an HTTP/2 one does.
	dialH1Out := func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		c, err := dialH1(ctx, addr)
		if err != nil && ctx.Err() == nil {
			p.routes.ejectEverywhere(addr)
		}
		return c, err
	}
	p.h1out = http1.NewServer(http1.Config{Router: http1.RouterFunc(p.routeH1Outbound), Dial: dialH1Out, Logger: cfg.Logger})
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
// accepting and sends GOAWAY at once, the outbound side keeps serving the app until no client
// connection is left (inbound or outbound) or the drain timeout passes, whichever comes first.
// It returns nil after a clean drain.
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
	for _, l := range slices.Concat(tag(outbound, metrics.Outbound), tag(inbound, metrics.Inbound), tag(adminLns, "admin")) {
		p.listeners = append(p.listeners, listenerDoc{Role: l.direction, Address: l.Addr().String()})
	}
	adminSrv := admin.NewServer(admin.Handler(admin.Config{
		Registry: p.metrics.Registry,
		Ready:    p.readiness,
		Debug:    p.debugDocs(),
		Streams:  map[string]http.Handler{"tap": p.tap.Handler()},
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
		// A source that holds a snapshot now (the file) is in force before the first accept. One
		// that does not yet (a controller not reachable) must not hold the pod's traffic back,
		// since init's rules already capture all of it: until it delivers, every destination is
		// unknown and relayed to its original address, and /ready says discovery is pending.
		snaps := p.cfg.Discovery.Watch(serveCtx)
		select {
		case first, ok := <-snaps:
			if ok {
				p.update(first)
			}
		default:
			p.log.Warn("discovery pending: relaying every destination to its original address until the first snapshot")
		}
		g.Go(func() error {
			for s := range snaps {
				p.update(s)
				p.log.Info("discovery updated", "revision", s.Revision(), "services", len(s.Services()))
			}
			return nil
		})
		g.Go(func() error { p.pruneGone(serveCtx); return nil })
	} else {
		p.routes.update(discovery.NewSnapshot("cluster.local", "none", nil))
	}
	var conns sync.WaitGroup
	for _, l := range slices.Concat(tag(outbound, metrics.Outbound), tag(inbound, metrics.Inbound)) {
		g.Go(func() error { return p.accept(serveCtx, l, &conns) })
	}
	p.ready.Store(true)
	p.log.Info("proxy ready", "outbound", p.cfg.OutboundPort, "inbound", p.cfg.InboundPort, "admin", p.cfg.AdminPort,
		"max_connections", p.cfg.MaxConnections)

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
	// Waiting out the timeout with nothing open would only race the SIGKILL at the end of the
	// pod's grace period. An app still running may open a connection after this: as with
	// Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS it is refused, which a native sidecar (stopped
	// after the app) never sees.
	select {
	case <-p.live.idle():
		p.log.Info("drain done: no connection left")
	case <-drainCtx.Done():
		p.log.Info("drain timeout: closing the connections left", "connections", p.live.count())
	}

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
// services declared HTTP/2 that are new or changed, so no endpoint of a burst waits for a dial
// its peers did not. With a discovery.Subscriber those are the services in use: the proxy never
// dials the endpoints of a service it does not route to. Endpoints that left discovery (or a
// service the proxy stopped using) lose their pooled connections now and their metric series
// after MetricsRetain (pruneGone).
func (p *Proxy) update(s *discovery.Snapshot) {
	p.goneMu.Lock()
	old := p.routes.snapshot()
	// Pooled connections were checked against what their endpoint had to prove then.
	changed, reidentified, fresh := p.routes.update(s)
	retire := map[netip.AddrPort]bool{}
	now := time.Now()
	p.updated.Store(&now)
	for _, addr := range changed {
		retire[addr] = true
	}
	current := endpointsOf(s)
	for addr := range endpointsOf(old) {
		if !current[addr] {
			p.gone[addr] = now
			retire[addr] = true
		}
	}
	for addr := range current {
		delete(p.gone, addr) // back before its series were forgotten: they go on
	}
	p.goneMu.Unlock()
	for addr := range retire {
		p.h2out.Retire(addr)
		p.h1out.Retire(addr)
	}
	for _, addr := range reidentified {
		p.log.Info("endpoint identity changed: pooled connections retired", "endpoint", addr.String())
	}
	for _, svc := range fresh {
		if svc.Protocol == discovery.ProtocolHTTP2 {
			p.warm(svc)
		}
	}
	p.discovered.Store(true)
}

// endpointsOf is the set of every service's endpoint addresses in s (nil: none).
func endpointsOf(s *discovery.Snapshot) map[netip.AddrPort]bool {
	set := map[netip.AddrPort]bool{}
	if s == nil {
		return set
	}
	for _, svc := range s.Services() {
		for _, e := range svc.Endpoints {
			set[e.Addr] = true
		}
	}
	return set
}

// pruneGone forgets the outbound metric series of endpoints gone from discovery for longer
// than MetricsRetain, until ctx ends. Counters stay monotonic while an endpoint is in
// discovery, and for the retention after it left, so a scrape sees their last values;
// Prometheus then marks the series stale, as it does for linkerd2-proxy's idle ones.
func (p *Proxy) pruneGone(ctx context.Context) {
	tick := min(max(p.cfg.MetricsRetain/4, 100*time.Millisecond), time.Minute)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.goneMu.Lock()
		now := time.Now()
		for addr, since := range p.gone {
			if now.Sub(since) >= p.cfg.MetricsRetain {
				p.metrics.Forget(metrics.Outbound, addr)
				delete(p.gone, addr)
			}
		}
		p.goneMu.Unlock()
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
	case p.cfg.Discovery != nil && !p.discovered.Load():
		// A source that can say why (the controller's client) does.
		if src, ok := p.cfg.Discovery.(interface{ Err() error }); ok && src.Err() != nil {
			return fmt.Errorf("waiting for discovery: %w", src.Err())
		}
		return errors.New("waiting for discovery")
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
		"endpoints":   func(r *http.Request) any { return p.routes.doc(r.URL.Query().Has("all")) },
		"connections": func(r *http.Request) any { return p.conns.doc(r.URL.Query().Get("closed") == "1") },
		"proxy":       func(*http.Request) any { return p.proxyDoc() },
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
	var failed sometimes
	failed.every = 10 * time.Second
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
			if n, ok := failed.due(); ok {
				p.log.Warn("accept failed", "direction", l.direction, "err", err, "times", n)
			}
			time.Sleep(50 * time.Millisecond) // e.g. out of file descriptors: do not spin
			continue
		}
		if !p.live.tryAdd(p.cfg.MaxConnections) {
			p.refuseAtLimit(c.(*net.TCPConn), l.direction)
			continue
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer p.live.done()
			p.handle(ctx, c.(*net.TCPConn), l.direction)
		}()
	}
}

// refuseAtLimit closes a connection accepted past MaxConnections with a reset, so its client
// fails at once instead of waiting on a connection nobody serves, counts it, and logs at most
// one line every 10 s. Accepting it (rather than leaving it in the backlog) is what keeps the
// listener from spinning on a connection it will not take.
func (p *Proxy) refuseAtLimit(c *net.TCPConn, direction string) {
	c.SetLinger(0)
	c.Close()
	p.metrics.Refused(direction, "limit")
	if n, ok := p.refusedLog.due(); ok {
		p.log.Warn("connections refused: the proxy serves its limit of connections (--max-connections)",
			"max_connections", p.cfg.MaxConnections, "direction", direction, "refused", n)
	}
}

// sometimes lets an event through at most once per period and counts what it held back.
type sometimes struct {
	every time.Duration
	mu    sync.Mutex
	last  time.Time
	held  int
}

// due reports whether the event may be logged now, and how many occurred since the last one
// that was (this one included).
func (s *sometimes) due() (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held++
	if now := time.Now(); s.last.IsZero() || now.Sub(s.last) >= s.every {
		n := s.held
		s.last, s.held = now, 0
		return n, true
	}
	return 0, false
}
