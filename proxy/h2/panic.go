package h2

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"time"
)

// Panic containment. A bug in the engine, or a panic in what it calls (Router, Route.Done,
// Dialer, Logger), must end the connection it happened on, not the proxy: each of the engine's
// goroutines (a client connection's read loop, an upstream connection's read loop, a dial, the
// janitor) recovers, logs the panic with its stack, reports it to Config.OnPanic, and goes on
// as after an error there: the connection is closed and its streams failed, a dial fails, the
// janitor waits for its next tick.
//
// A panic that unwinds through an engine critical section leaves that mutex locked (the engine
// does not defer its unlocks, on the hot path). The teardown after a panic therefore runs on
// its own goroutine, and the panicking one waits for it at most WriteTimeout plus a second (a
// legitimate holder may be blocked that long in a socket write): if it is still blocked then,
// the error is logged and the streams behind the lock are abandoned, rather than the recovery
// hanging too.

// Panic describes a panic the engine recovered from, as given to Config.OnPanic.
type Panic struct {
	// Where names the goroutine: "client connection", "upstream connection", "upstream dial",
	// or "janitor" (" teardown" appended when the cleanup after a first panic panicked again).
	Where string
	// Peer is the client's address or the upstream endpoint's, "" for the janitor.
	Peer  string
	Value any
	Stack []byte
}

// maxTeardownTries bounds the reruns of a teardown that panics (a Route.Done that panics for
// every stream): each run finishes at least the stream whose Done panicked.
const maxTeardownTries = 1024

// catch runs fn and returns the value and stack of a panic in it, if any.
func catch(fn func()) (v any, stack []byte) {
	defer func() {
		if v = recover(); v != nil {
			stack = debug.Stack() // still the panicking goroutine's frames
		}
	}()
	fn()
	return nil, nil
}

// recovered logs and reports a recovered panic and returns it as an error.
func (s *Server) recovered(where, peer string, v any, stack []byte) error {
	// A Logger or OnPanic that panics as well must not undo the containment.
	catch(func() {
		s.cfg.Logger.Error("h2: recovered from a panic", "where", where, "peer", peer, "panic", fmt.Sprint(v), "stack", string(stack))
		if s.cfg.OnPanic != nil {
			s.cfg.OnPanic(Panic{Where: where, Peer: peer, Value: v, Stack: stack})
		}
	})
	return fmt.Errorf("h2: internal error in %s: %v", where, v)
}

// guard runs a connection's read loop and then its teardown, containing a panic in either:
// the connection is closed and the teardown (which fails its streams) finishes on another
// goroutine, waited for a bounded time.
func (s *Server) guard(where string, c *conn, serve func() error, teardown func(error)) error {
	var err error
	v, stack := catch(func() { err = serve() })
	if v == nil {
		if v, stack = catch(func() { teardown(err) }); v == nil {
			return err
		}
	}
	peer := ""
	if a := c.nc.RemoteAddr(); a != nil {
		peer = a.String()
	}
	err = s.recovered(where, peer, v, stack)
	c.close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range maxTeardownTries {
			v, stack := catch(func() { teardown(err) })
			if v == nil {
				return
			}
			s.recovered(where+" teardown", peer, v, stack)
		}
	}()
	t := time.NewTimer(s.cfg.WriteTimeout + time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.cfg.Logger.Error("h2: the teardown after a panic is still blocked, likely on a lock the panic left held; its streams are abandoned",
			"where", where, "peer", peer)
	}
	return err
}

// dialUpstream calls the Dialer, turning a panic in it into a failed dial.
func (s *Server) dialUpstream(ctx context.Context, addr netip.AddrPort) (nc net.Conn, err error) {
	if v, stack := catch(func() { nc, err = s.cfg.Dial(ctx, addr) }); v != nil {
		return nil, s.recovered("upstream dial", addr.String(), v, stack)
	}
	return nc, err
}
