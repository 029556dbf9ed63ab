package h2

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// ErrServerClosed is returned by ServeConn after Shutdown or Close.
var ErrServerClosed = errors.New("h2: server closed")

// Server forwards the streams of the client connections given to ServeConn. It owns the upstream
// connection pools, shared by all client connections, and one janitor goroutine (idle timeouts,
// keepalives, stuck writes) started with the first connection and stopped by Close.
type Server struct {
	cfg              Config
	bufs             bufPool
	epoch            time.Time
	maxContinuations int
	ctx              context.Context // ends at Close: cancels dials
	cancel           context.CancelFunc

	mu       sync.Mutex
	clients  map[*clientConn]struct{}
	ups      map[*upConn]struct{}
	pools    map[netip.AddrPort]*pool
	shutdown bool
	closed   bool
	janitor  bool
	wg       sync.WaitGroup // janitor, dials, upstream read loops
}

// NewServer returns a Server; cfg.Router is required.
func NewServer(cfg Config) *Server {
	cfg.setDefaults()
	s := &Server{
		cfg:     cfg,
		epoch:   time.Now(),
		clients: make(map[*clientConn]struct{}),
		ups:     make(map[*upConn]struct{}),
		pools:   make(map[netip.AddrPort]*pool),
	}
	// A legitimate block of MaxHeaderListSize bytes needs at most that many bytes of frames.
	s.maxContinuations = 16 + int(cfg.MaxHeaderListSize)/1024
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

func (s *Server) now() int64 { return int64(time.Since(s.epoch)) }

// ServeConn serves one client connection on the calling goroutine and returns when it ends:
// the client closed it, a protocol error closed it, ctx ended, or the Server shut down. c must
// start with the HTTP/2 client preface (a sniffing listener may replay peeked bytes). dst is the
// connection's original destination, passed to the Router. A clean close returns nil.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, dst netip.AddrPort) error {
	return s.ServeConnWith(ctx, c, dst, ConnInfo{})
}

// ServeConnWith is ServeConn for a connection the caller knows more about, typically the peer
// identity mutual TLS verified; the Router sees info as Head.Conn on every stream.
func (s *Server) ServeConnWith(ctx context.Context, c net.Conn, dst netip.AddrPort, info ConnInfo) error {
	cc := newClientConn(s, c, dst)
	cc.info = info
	s.mu.Lock()
	if s.shutdown || s.closed {
		s.mu.Unlock()
		c.Close()
		return ErrServerClosed
	}
	s.clients[cc] = struct{}{}
	if !s.janitor {
		s.janitor = true
		s.wg.Add(1)
		go s.runJanitor()
	}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, cc.close)
	defer stop()
	return s.guard("client connection", &cc.conn, cc.serve, func(error) { cc.teardown() })
}

// Shutdown stops accepting streams: every client connection gets GOAWAY with the last stream id
// it opened, so its in-flight streams finish and newer ones are refused; connections close as
// their streams end. Shutdown returns when all have closed, or closes everything when ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	list := make([]*clientConn, 0, len(s.clients))
	for cc := range s.clients {
		list = append(list, cc)
	}
	s.mu.Unlock()
	for _, cc := range list {
		cc.startGoAway(http2.ErrCodeNo, "server shutting down")
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.clients)
		s.mu.Unlock()
		if n == 0 {
			return s.Close()
		}
		select {
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Close closes every client and upstream connection at once and waits for the engine's own
// goroutines. Streams in flight are reset.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed, s.shutdown = true, true
	var conns []*conn
	for cc := range s.clients {
		conns = append(conns, &cc.conn)
	}
	for u := range s.ups {
		conns = append(conns, &u.conn)
	}
	s.mu.Unlock()
	s.cancel()
	for _, c := range conns {
		c.close()
	}
	s.wg.Wait()
	return nil
}

func (s *Server) removeClient(cc *clientConn) {
	s.mu.Lock()
	delete(s.clients, cc)
	s.mu.Unlock()
}

func (s *Server) addUp(u *upConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.ups[u] = struct{}{}
	return true
}

func (s *Server) removeUp(u *upConn) {
	s.mu.Lock()
	delete(s.ups, u)
	s.mu.Unlock()
}

// open gives st a stream slot on a connection to its route's endpoint, or queues it for one.
func (s *Server) open(st *stream, fl *flusher) {
	for !s.pool(st.route.Addr).open(st, fl) {
		// Swept between the lookup and the open: the next lookup makes a new pool.
	}
}

// pool returns the pool for addr, making it if there is none. A pool it returned may be swept
// (pool.swept) as soon as it is empty.
func (s *Server) pool(addr netip.AddrPort) *pool {
	s.mu.Lock()
	p := s.pools[addr]
	if p == nil {
		p = &pool{srv: s, addr: addr}
		s.pools[addr] = p
	}
	s.mu.Unlock()
	return p
}

// Retire stops new streams on the pooled connections to addr: streams already on them finish,
// later streams get a connection dialled afterwards, and a dial in progress is not used. The
// proxy calls it when discovery changes who the endpoint at addr must prove to be, so no new
// request travels over a connection checked against the old identity.
func (s *Server) Retire(addr netip.AddrPort) {
	s.mu.Lock()
	p := s.pools[addr]
	s.mu.Unlock()
	if p == nil {
		return
	}
	// In one critical section with gen++, so no stream opened after Retire lands on an old one.
	p.mu.Lock()
	if p.swept {
		// It was empty: no connection to retire. A pool made since has only dialled after
		// Retire was called, against what the endpoint is now.
		p.mu.Unlock()
		return
	}
	p.gen++
	var idle []*upConn
	for _, u := range slices.Clone(p.conns) {
		if p.drainLocked(u) {
			idle = append(idle, u)
		}
	}
	dial := p.redialLocked()
	p.mu.Unlock()
	for _, u := range idle {
		u.goAwayAndClose()
	}
	if dial {
		s.goDial(p)
	}
}

// Warm opens a connection to addr ahead of its first stream when the pool has none and is not
// dialing one, so the first requests to a newly discovered endpoint do not queue behind a dial
// while its peers already answer (linkerd2-proxy's balancer likewise only picks endpoints whose
// connection is ready). It does not block; a failed dial is logged at debug level, and the next
// stream dials again.
func (s *Server) Warm(addr netip.AddrPort) {
	p := s.pool(addr)
	p.mu.Lock()
	for p.swept {
		p.mu.Unlock()
		p = s.pool(addr)
		p.mu.Lock()
	}
	dial := len(p.conns) == 0 && p.dialing == 0
	if dial {
		p.dialing++
	}
	p.mu.Unlock()
	if dial {
		s.goDial(p)
	}
}

// goDial dials for p on a new goroutine owned by the Server.
func (s *Server) goDial(p *pool) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if v, stack := catch(p.dial); v != nil {
			s.recovered("upstream dial", p.addr.String(), v, stack)
		}
	}()
}

// runJanitor enforces the timeouts: stuck socket writes, idle client and upstream connections,
// upstream keepalive pings. It runs until Close.
func (s *Server) runJanitor() {
	defer s.wg.Done()
	cfg := &s.cfg
	tick := min(time.Second, cfg.UpstreamIdleTimeout/4, cfg.IdleTimeout/4, cfg.WriteTimeout/4, cfg.UpstreamKeepalive/4)
	if cfg.PeerKeepalive != nil {
		tick = min(tick, cfg.PeerKeepaliveInterval/4, cfg.PeerKeepaliveTimeout/4, cfg.QueueReroute/4)
	}
	tick = max(tick, 5*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if v, stack := catch(s.sweep); v != nil {
			s.recovered("janitor", "", v, stack) // and sweep again at the next tick
		}
	}
}

func (s *Server) sweep() {
	cfg := &s.cfg
	now := s.now()
	s.mu.Lock()
	clients := make([]*clientConn, 0, len(s.clients))
	for cc := range s.clients {
		clients = append(clients, cc)
	}
	ups := make([]*upConn, 0, len(s.ups))
	for u := range s.ups {
		ups = append(ups, u)
	}
	var dialing []*pool
	for addr, p := range s.pools {
		p.mu.Lock()
		if len(p.conns) == 0 && p.dialing == 0 && len(p.waiters) == 0 {
			p.swept = true
			delete(s.pools, addr)
		}
		if len(p.conns) == 0 && p.dialing > 0 && len(p.waiters) > 0 {
			dialing = append(dialing, p)
		}
		p.mu.Unlock()
	}
	s.mu.Unlock()
	if len(dialing) > 0 {
		var fl flusher
		for _, p := range dialing {
			p.rerouteSlowDials(now, &fl)
		}
		fl.flush()
	}

	// The janitor only reads and appends (PING, GOAWAY): it never waits for a peer's socket.
	stuck := func(c *conn) bool {
		ws := c.stalled.Load()
		return ws != 0 && time.Duration(now-ws) > cfg.WriteTimeout
	}
	for _, cc := range clients {
		if stuck(&cc.conn) {
			cfg.Logger.Info("closing client connection: write blocked", "remote", cc.nc.RemoteAddr(), "timeout", cfg.WriteTimeout)
			cc.close()
			continue
		}
		cc.mu.Lock()
		idle := len(cc.streams) == 0 && time.Duration(now-cc.idleSince) > cfg.IdleTimeout
		cc.mu.Unlock()
		if idle {
			cc.startGoAway(http2.ErrCodeNo, "idle timeout")
		}
	}
	for _, u := range ups {
		if stuck(&u.conn) {
			cfg.Logger.Info("closing upstream connection: write blocked", "addr", u.pool.addr, "timeout", cfg.WriteTimeout)
			u.close()
			continue
		}
		p := u.pool
		p.mu.Lock()
		active, idleSince := u.active, u.idleSince
		p.mu.Unlock()
		if active == 0 && time.Duration(now-idleSince) > cfg.UpstreamIdleTimeout {
			p.drainConn(u)
			continue
		}
		interval, timeout := cfg.UpstreamKeepalive, cfg.UpstreamKeepalive
		if u.peerKeepalive {
			// Idle connections too: a peer that vanished is found before a stream is sent
			// to it, not by the stream.
			interval, timeout = cfg.PeerKeepaliveInterval, cfg.PeerKeepaliveTimeout
		} else if active == 0 {
			continue
		}
		if pa := u.pingAt.Load(); pa != 0 {
			if time.Duration(now-pa) > timeout {
				cfg.Logger.Info("closing upstream connection: keepalive ping unanswered", "addr", p.addr,
					"timeout", timeout, "streams", active)
				u.keepaliveFailed.Store(true)
				u.close()
				if cfg.OnUpstreamFailure != nil {
					cfg.OnUpstreamFailure(p.addr, ErrKeepalive)
				}
			}
			continue
		}
		if time.Duration(now-u.lastRead.Load()) > interval {
			u.pingAt.Store(now)
			u.wmu.Lock()
			u.framePing(false, [8]byte{'d', 't', 'r', 'k', 'e', 'e', 'p', 'a'})
			u.flushLocked()
			u.wmu.Unlock()
		}
	}
}
