package http1

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// ErrServerClosed is returned by ServeConn after Shutdown or Close.
var ErrServerClosed = errors.New("http1: server closed")

// Server forwards the requests of the client connections given to ServeConn. It owns the upstream
// connection pool, shared by all client connections.
type Server struct {
	cfg      Config
	pool     *pool
	shutdown atomic.Bool
	bufs     sync.Pool // *[]byte copy buffers

	mu      sync.Mutex
	clients map[*clientConn]struct{}
	closed  bool
}

// NewServer returns a Server; cfg.Router is required.
func NewServer(cfg Config) *Server {
	cfg.setDefaults()
	s := &Server{cfg: cfg, clients: make(map[*clientConn]struct{})}
	s.pool = newPool(&s.cfg)
	return s
}

// Retire closes the pooled connections to addr and keeps those in use, and those being dialled,
// from returning to the pool: later requests get a connection dialled afterwards. The proxy
// calls it when discovery changes who the endpoint at addr must prove to be.
func (s *Server) Retire(addr netip.AddrPort) { s.pool.retire(addr) }

// ServeConn serves one client connection on the calling goroutine and returns when it ends: the
// client closed it, a malformed request or an upgrade relay ended it, ctx ended, or the Server
// shut down. c may replay sniffed bytes. dst is the connection's original destination, passed to
// the Router. A clean end (the client closed between requests, a timeout, a shutdown) returns
// nil; a malformed request returns the reason it was refused.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, dst netip.AddrPort) error {
	return s.ServeConnWith(ctx, c, dst, ConnInfo{})
}

// ServeConnWith is ServeConn for a connection the caller knows more about, typically the peer
// identity mutual TLS verified; the Router reads info with ConnInfoOf on every request.
func (s *Server) ServeConnWith(ctx context.Context, c net.Conn, dst netip.AddrPort, info ConnInfo) (err error) {
	cc := newClientConn(ctx, s, c, dst)
	if info != (ConnInfo{}) {
		cc.reqCtx = context.WithValue(ctx, connInfoKey{}, &info)
	}
	s.mu.Lock()
	if s.closed || s.shutdown.Load() {
		s.mu.Unlock()
		cc.cancel()
		c.Close()
		return ErrServerClosed
	}
	s.clients[cc] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, cc.close)
	defer func() {
		stop()
		cc.close()
		s.mu.Lock()
		delete(s.clients, cc)
		s.mu.Unlock()
		// Library code never takes the process down: a bug on one connection ends that
		// connection only.
		if p := recover(); p != nil {
			s.cfg.Logger.Error("http1: panic serving connection", "dst", dst, "panic", p,
				"stack", string(debug.Stack()))
			err = fmt.Errorf("http1: internal error: %v", p)
		}
	}()
	return cc.serve()
}

// Shutdown stops taking new requests: idle keep-alive connections are closed at once, and busy
// ones after their response, which carries "Connection: close". Shutdown returns when every
// connection has ended, or closes everything when ctx ends. Upgraded connections (WebSocket
// relays) count as busy until they end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown.Store(true)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.clients)
		list := make([]*clientConn, 0, n)
		for cc := range s.clients {
			list = append(list, cc)
		}
		s.mu.Unlock()
		if n == 0 {
			return s.Close()
		}
		// Repeated on every tick: a connection that was busy at the first pass goes idle later,
		// and one between two states may have missed the first interrupt.
		for _, cc := range list {
			cc.interruptIdle()
		}
		select {
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Close closes every client and upstream connection at once. Requests in flight fail.
func (s *Server) Close() error {
	s.shutdown.Store(true)
	s.mu.Lock()
	s.closed = true
	list := make([]*clientConn, 0, len(s.clients))
	for cc := range s.clients {
		list = append(list, cc)
	}
	s.mu.Unlock()
	for _, cc := range list {
		cc.close()
	}
	s.pool.close()
	return nil
}

func (s *Server) getBuf() *[]byte {
	if b, ok := s.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 32<<10)
	return &b
}

func (s *Server) putBuf(b *[]byte) { s.bufs.Put(b) }
