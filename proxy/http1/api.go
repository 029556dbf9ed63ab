package http1

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// Router picks the upstream endpoint of each request.
//
// Route is called on the client connection's goroutine, once per request, after the request
// head has been read and validated, so it must not block: like grpc-go's Picker it should read an
// immutable snapshot. dst is the client connection's original destination as given to ServeConn;
// ConnInfoOf(r) says who the client is. r is valid only during the call: the Router must not
// read r.Body, modify r, or retain it. A *Refusal makes the engine answer with its status
// (typically 403); any other error a 503 with the error text as a one-line body.
type Router interface {
	Route(dst netip.AddrPort, r *http.Request) (Route, error)
}

// ConnInfo is what the engine's caller knows about a client connection beyond its original
// destination, shown to the Router with every request so that it can authorize requests by who
// sent them.
type ConnInfo struct {
	// Peer is the client's authenticated identity: the SPIFFE ID mutual TLS verified
	// (mtls.PeerID), "" for a plaintext client.
	Peer string
}

type connInfoKey struct{}

// ConnInfoOf returns the ConnInfo of the connection r arrived on, as given to ServeConnWith;
// zero for ServeConn. The engine carries it in r's context, the only per-request slot an
// *http.Request has for it.
func ConnInfoOf(r *http.Request) ConnInfo {
	if info, ok := r.Context().Value(connInfoKey{}).(*ConnInfo); ok {
		return *info
	}
	return ConnInfo{}
}

// Refusal is the error a Router returns to deny a request on purpose (an authorization policy
// said no) rather than failing to route it: the engine answers HTTPStatus with Message as a
// one-line body and nothing goes upstream. It is the client's doing, not the upstream's: if the
// Router returned a Route with Done alongside it, Done sees the status and Upstream false.
type Refusal struct {
	// HTTPStatus defaults to 403 Forbidden.
	HTTPStatus int
	// Message says why, for the client; default "permission denied".
	Message string
}

// Error returns the message the client receives.
func (r *Refusal) Error() string {
	if r.Message == "" {
		return "permission denied"
	}
	return r.Message
}

func (r *Refusal) status() int {
	if r.HTTPStatus < 100 || r.HTTPStatus > 999 {
		return http.StatusForbidden
	}
	return r.HTTPStatus
}

// RouterFunc adapts a function to Router.
type RouterFunc func(dst netip.AddrPort, r *http.Request) (Route, error)

// Route calls f.
func (f RouterFunc) Route(dst netip.AddrPort, r *http.Request) (Route, error) { return f(dst, r) }

// Route is where one request goes.
type Route struct {
	// Addr is the upstream endpoint; requests to the same Addr share pooled connections.
	Addr netip.AddrPort
	// Done, if not nil, is called exactly once when the exchange ends (response body finished,
	// or failed), on the client connection's goroutine with no engine locks held. It must not
	// block: it feeds the balancer (latency, in-flight counts) and metrics. When Retry sent the
	// request elsewhere, the attempt it left ends here too, with Result.Retried set.
	Done func(Result)
	// Timeout, if positive, bounds the request from the end of its head: past it the upstream
	// connection is closed (the application sees the request cancelled) and the client answered
	// 504, or, once the response is under way, its connection closed; Result.TimedOut is set.
	Timeout time.Duration
	// Retry, if not nil, is asked where a failed attempt goes next (see Retrier). Without it the
	// engine replays only a bodyless idempotent request whose pooled connection was found closed.
	Retry Retrier
	// MeshClient says the client is another Detour proxy, which can tell from how the engine
	// fails a request what became of it: a request whose dial failed is answered 503 with
	// ProxyErrorHeader "refused" (the application never saw it, so the client sends it to
	// another replica), one whose upstream connection was lost after it went out 502 with
	// ProxyErrorHeader "reset" (retried only as a reset: idempotent requests).
	MeshClient bool
}

// ProxyErrorHeader marks a response the engine synthesized for a MeshClient (see there); the
// same name as the HTTP/2 engine's.
const ProxyErrorHeader = "Detour-Proxy-Error"

// AttemptHeader carries a retried request's attempt number (2 for the first retry).
const AttemptHeader = "Detour-Attempt"

// Retrier chooses where a request goes after an attempt failed. The engine asks it only when
// the request can be sent again whole: nothing of its body was read from the client yet, or all
// of it is kept (Config.MaxReplayBytes; a chunked body is not kept), and no interim response was
// relayed. Never after the request's deadline or once its client went away.
//
// Retry is called on the client connection's goroutine with no engine locks held; it must not
// block. It returns the next attempt's route (its Retry is asked again if that fails too) and how
// long to wait before sending it, or ok false to let the failure reach the client.
type Retrier interface {
	Retry(a *Attempt) (next Route, backoff time.Duration, ok bool)
}

// RetryReason says how an attempt failed.
type RetryReason uint8

// Reasons for a retry. The first two prove that the upstream application never saw the
// request; the others do not.
const (
	// RetryDialFailed: no connection to the endpoint could be made (refused, reset, TLS
	// handshake or peer identity failure).
	RetryDialFailed RetryReason = iota + 1
	// RetryRefused: the endpoint's proxy could not reach its application (a 503 marked with
	// ProxyErrorHeader "refused").
	RetryRefused
	// RetryStatus: the upstream answered 5xx; the response is held back from the client.
	RetryStatus
	// RetryReset: the upstream connection was lost after the request went out and before a
	// response head, or the endpoint's proxy said so (ProxyErrorHeader "reset").
	RetryReset
)

// Unreached reports whether the reason proves the request never reached the application.
func (r RetryReason) Unreached() bool { return r == RetryDialFailed || r == RetryRefused }

// Attempt is a failed attempt, as a Retrier sees it. The Retrier must not retain it.
type Attempt struct {
	Method, Path string
	Addr         netip.AddrPort // the endpoint that failed
	Reason       RetryReason
	Status       int   // the response held back (RetryStatus); 0 otherwise
	Err          error // what failed, for the other reasons
	// Attempts counts the attempts made so far, this one included.
	Attempts int
	// Remaining is the time left before the request's deadline; 0 if it has none.
	Remaining time.Duration
}

// Result describes how a request ended.
type Result struct {
	Addr netip.AddrPort
	// Status is the final HTTP status sent to the client (from the upstream, or 502 synthesized
	// by the engine); 101 for an upgrade that became a relay; 0 if no response was sent.
	Status int
	// Err is nil when the exchange completed normally (for an upgrade: both directions of the
	// relay ended cleanly). Otherwise it says what ended it.
	Err error
	// Upstream reports whether a failure is attributed to the upstream endpoint (dial failure,
	// lost connection, malformed response) rather than to the client; balancers use it to eject
	// hosts.
	Upstream bool
	// Retried says this attempt failed and Route.Retry sent the request elsewhere: the client
	// saw nothing of it.
	Retried bool
	// TimedOut says Route.Timeout expired.
	TimedOut bool
	// Duration runs from the end of the request head to the end of the exchange.
	Duration time.Duration
	// Queued is the part of Duration spent getting an upstream connection (a pooled one, or a
	// dial) before the request head went upstream (the last try's); all of it if it never did.
	Queued time.Duration
	// Headers runs from the request head going upstream to the final response head (or 101)
	// arriving; 0 if none did. It is the endpoint's latency a balancer should learn
	// (balance.Pick.Done), not the time the body then streams. Without a response head,
	// Duration - Queued is how long the endpoint kept the caller waiting for one.
	Headers time.Duration
	// ReqBytes and RespBytes count body bytes (decoded, without chunk framing) forwarded from the
	// client and from the upstream; for an upgrade, the relayed bytes.
	ReqBytes, RespBytes int64
	// Retries counts replays of the request on a fresh connection after a pooled connection
	// turned out to be closed by the upstream.
	Retries int
}

// Dialer opens a connection to an upstream endpoint. It is called on the client connection's
// goroutine and may block until ctx ends (Config.DialTimeout bounds it). A TLS dialer must return
// a connection that has completed its handshake.
type Dialer func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	Router Router       // required
	Dial   Dialer       // default: plain TCP
	Logger *slog.Logger // default: slog.Default()

	// MaxHeaderBytes bounds the bytes read for one request head (request line and fields) and
	// for the trailer section of a chunked request; a larger head gets 431 and the connection is
	// closed. Default 64 KiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds the time from the first byte of a request to the end of its head
	// (slowloris). Default 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a client keep-alive connection that waits this long for its next
	// request. Default 5 min.
	IdleTimeout time.Duration
	// WriteTimeout closes a connection whose socket write has been blocked this long (a peer that
	// stopped reading must not hold an upstream connection forever). Default 15 s.
	WriteTimeout time.Duration
	// DialTimeout bounds one upstream dial. Default 5 s.
	DialTimeout time.Duration
	// MaxIdlePerEndpoint bounds the idle keep-alive connections pooled per upstream endpoint;
	// negative disables pooling. Default 32.
	MaxIdlePerEndpoint int
	// UpstreamIdleTimeout closes a pooled upstream connection idle this long. Default 90 s.
	UpstreamIdleTimeout time.Duration
	// MaxReplayBytes bounds the request body kept, for a route with a Retrier, so that the
	// request can be sent again after it went out; a larger or chunked body is not retried once
	// its first byte was read. Default 64 KiB; negative keeps none.
	MaxReplayBytes int
}

func (c *Config) setDefaults() {
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr.String())
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur(&c.ReadHeaderTimeout, 10*time.Second)
	defDur(&c.IdleTimeout, 5*time.Minute)
	defDur(&c.WriteTimeout, 15*time.Second)
	defDur(&c.DialTimeout, 5*time.Second)
	defDur(&c.UpstreamIdleTimeout, 90*time.Second)
	if c.MaxReplayBytes == 0 {
		c.MaxReplayBytes = 64 << 10
	}
	if c.MaxIdlePerEndpoint == 0 {
		c.MaxIdlePerEndpoint = 32
	}
}
