package h2

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Head is the request a Router sees: the pseudo-headers and the regular header fields of a new
// stream, already validated (RFC 9113 §8.1.1, §8.2, §8.3): a malformed request, one with a
// connection-specific field among them, never reaches the Router.
type Head struct {
	Method, Scheme, Authority, Path string
	// Header holds the regular fields in wire order, names lowercase. The Router must not modify
	// or retain it after Route returns.
	Header []hpack.HeaderField
	// Conn describes the client connection the stream arrived on, as given to ServeConnWith
	// (zero for ServeConn). It is never nil and is shared by the connection's streams: read it,
	// do not modify it.
	Conn *ConnInfo
}

// ConnInfo is what the engine's caller knows about a client connection beyond its original
// destination, handed to the Router with every stream so that it can authorize requests by who
// sent them.
type ConnInfo struct {
	// Peer is the client's authenticated identity: the SPIFFE ID mutual TLS verified
	// (mtls.PeerID), "" for a plaintext client.
	Peer string
	// Owner is the caller's own record of the connection (the proxy's connection table entry),
	// handed back to the Router with every stream; the engine never reads it.
	Owner any
}

// Refusal is the error a Router returns to deny a request on purpose (an authorization policy
// said no) rather than failing to route it. The engine answers the stream itself: a gRPC request
// gets a trailers-only response with grpc-status GRPCStatus and Message as grpc-message, any
// other request HTTPStatus with Message as body. The refusal is the client's doing, not the
// upstream's: if the Router returned a Route with Done alongside it, Done sees Upstream false.
type Refusal struct {
	// HTTPStatus answers non-gRPC requests; default 403 Forbidden.
	HTTPStatus int
	// GRPCStatus answers gRPC requests; default 7 PERMISSION_DENIED (0, OK, makes no sense for a
	// refusal and takes the default).
	GRPCStatus int
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

// asRefusal returns the Refusal in err's chain, or nil. The nil check comes first because the
// target errors.As fills escapes to the heap: streams that route fine must not pay for it.
func asRefusal(err error) *Refusal {
	if err == nil {
		return nil
	}
	var r *Refusal
	if errors.As(err, &r) {
		return r
	}
	return nil
}

func (r *Refusal) statuses() (httpStatus, grpcStatus int) {
	httpStatus, grpcStatus = r.HTTPStatus, r.GRPCStatus
	if httpStatus < 100 || httpStatus > 999 {
		httpStatus = 403
	}
	if grpcStatus <= 0 {
		grpcStatus = grpcPermissionDenied
	}
	return httpStatus, grpcStatus
}

// Get returns the value of the first field named name (lowercase), or "".
func (h *Head) Get(name string) string {
	for i := range h.Header {
		if h.Header[i].Name == name {
			return h.Header[i].Value
		}
	}
	return ""
}

// Router picks the upstream endpoint of each new stream.
//
// Route is called on the client connection's read goroutine, once per stream, so it must not
// block: like grpc-go's Picker it should read an immutable snapshot. dst is the client
// connection's original destination as given to ServeConn; h.Conn says who the client is. An
// error makes the engine answer the stream itself: a *Refusal (see there) with its statuses,
// typically PERMISSION_DENIED / 403; any other error with trailers-only grpc-status UNAVAILABLE
// and the error text as grpc-message for gRPC requests, a 503 with the error text as body for
// other requests.
type Router interface {
	Route(dst netip.AddrPort, h *Head) (Route, error)
}

// RouterFunc adapts a function to Router.
type RouterFunc func(dst netip.AddrPort, h *Head) (Route, error)

// Route calls f.
func (f RouterFunc) Route(dst netip.AddrPort, h *Head) (Route, error) { return f(dst, h) }

// Route is where one stream goes.
type Route struct {
	// Addr is the upstream endpoint; streams to the same Addr share pooled connections.
	Addr netip.AddrPort
	// Done, if not nil, is called exactly once per attempt: when the stream ends, and, when Retry
	// sent the stream elsewhere, for the attempt it left (Result.Retried set). It is called from
	// whichever engine goroutine ended the attempt, with no engine locks held. It must not
	// block: it feeds the balancer (latency, in-flight counts) and metrics.
	Done func(Result)
	// Timeout, if positive, bounds the stream from its request headers. The request's own
	// grpc-timeout bounds it too, and the shorter wins: past the deadline the upstream stream is
	// reset with CANCEL and the client answered DEADLINE_EXCEEDED (gRPC) or 504, Result.TimedOut
	// set. Nothing is retried past the deadline, and a retry carries the time left as its
	// grpc-timeout. One timer per client connection enforces every stream's deadline.
	Timeout time.Duration
	// Retry, if not nil, is asked where a failed attempt goes next (see Retrier). Without it the
	// engine replays only refused streams, on the same endpoint.
	Retry Retrier
	// MeshClient says the client is another Detour proxy, which can tell what became of the
	// request from how the engine fails it: a stream that could not reach Addr at all (its
	// dial failed) is reset with REFUSED_STREAM instead of answered 503, so the client knows
	// it was not processed (RFC 9113 §8.7) and sends it elsewhere; a stream whose upstream
	// connection was lost after the request went out is answered as usual, marked with the
	// response header detour-proxy-error: reset, so the client retries it only as a reset
	// (idempotent requests), not as the 502 or UNAVAILABLE an application answered.
	MeshClient bool
}

// ProxyErrorHeader marks a response the engine synthesized for a MeshClient (see there).
const ProxyErrorHeader = "detour-proxy-error"

// AttemptHeader numbers a retried request's attempts (2 for the first retry), as Envoy's
// x-envoy-attempt-count does; a client's own is not passed on.
const AttemptHeader = "detour-attempt"

// Retrier chooses where a stream goes after an attempt failed. The engine asks it only when the
// request can be sent again: for a refusal or a failed dial (RetryRefused, RetryDialFailed) the
// upstream provably did not process the request and its bytes are all at hand; for a response
// held back (RetryStatus) or a reset (RetryReset) the client's request has also ended and is
// kept whole (Config.MaxReplayBytes), so a stream whose request is still streaming, or larger
// than the limit, is never sent twice. Never after the stream's deadline or its client's reset.
//
// Retry is called on the engine goroutine that saw the failure, with the stream's lock held: it
// must not block or call into the engine. It returns the next attempt's route (its Retry is
// asked again if that fails too) and how long to wait before sending it, or ok false to let the
// failure reach the client. On ok the failed attempt's Done is called with Result.Retried.
type Retrier interface {
	Retry(a *Attempt) (next Route, backoff time.Duration, ok bool)
}

// RetryReason says how an attempt failed.
type RetryReason uint8

// Reasons for a retry. The first two are proof that the upstream application never saw the
// request; the others are not.
const (
	// RetryDialFailed: no connection to the endpoint could be made (refused, reset, TLS
	// handshake or peer identity failure, no HTTP/2 SETTINGS in time).
	RetryDialFailed RetryReason = iota + 1
	// RetryRefused: the upstream refused the stream unprocessed (RST_STREAM REFUSED_STREAM, or
	// a GOAWAY whose last-stream-id is below it; RFC 9113 §8.7).
	RetryRefused
	// RetryStatus: the upstream answered with a final status that may be worth retrying (HTTP
	// 5xx, or a trailers-only gRPC response with a non-OK grpc-status); it has been held back
	// from the client.
	RetryStatus
	// RetryReset: the upstream stream was reset, or its connection lost, after the request went
	// upstream and before any response headers.
	RetryReset
)

var retryReasonNames = [...]string{RetryDialFailed: "dial_failed", RetryRefused: "refused", RetryStatus: "status", RetryReset: "reset"}

// String names the reason as metrics label it.
func (r RetryReason) String() string {
	if int(r) < len(retryReasonNames) && r > 0 {
		return retryReasonNames[r]
	}
	return "unknown"
}

// Unreached reports whether the reason proves the request never reached the application.
func (r RetryReason) Unreached() bool { return r == RetryDialFailed || r == RetryRefused }

// Attempt is a failed attempt, as a Retrier sees it. The Retrier must not retain it.
type Attempt struct {
	Head   *Head
	Addr   netip.AddrPort // the endpoint that failed
	Reason RetryReason
	// Status and GRPCStatus are the response held back (RetryStatus); 0 and -1 otherwise.
	Status, GRPCStatus int
	Err                error // what failed, for RetryDialFailed, RetryRefused and RetryReset
	// Attempts counts the attempts made so far, this one included.
	Attempts int
	// Remaining is the time left before the stream's deadline; 0 if it has none.
	Remaining time.Duration
}

// Result describes how a stream ended.
type Result struct {
	Addr netip.AddrPort
	// Status is the HTTP status sent to the client (from the upstream or synthesized by the
	// engine); 0 if no response headers were sent.
	Status int
	// GRPCStatus is the grpc-status from the trailers or a trailers-only response; -1 if none.
	GRPCStatus int
	// Err is nil when both directions completed normally. Otherwise it says what ended the
	// stream: a reset from either side, a lost or refused upstream connection, a protocol error.
	Err error
	// ResetCode is the RST_STREAM code that ended the stream, if one did.
	ResetCode http2.ErrCode
	// Upstream reports whether a failure is attributed to the upstream endpoint (dial failure,
	// lost connection, bad response) rather than to the client; balancers use it to eject hosts.
	Upstream bool
	// Duration runs from the request HEADERS to the end of the stream.
	Duration time.Duration
	// Queued is the part of Duration spent waiting for an upstream connection (a dial) or a
	// stream slot before the request went upstream; all of it if it never did.
	Queued time.Duration
	// Headers runs from the request HEADERS going upstream to the upstream's final response
	// headers; 0 if none arrived. It is the endpoint's latency a balancer should learn
	// (balance.Pick.Done): the rest of a stream's life is how long the call streams, which says
	// nothing about the endpoint (a healthy one serving a minute's server stream is not a minute
	// slow). Without response headers, Duration - Queued is how long the endpoint kept the
	// caller waiting for them.
	Headers time.Duration
	// ReqBytes and RespBytes count DATA payload bytes received from the client and the upstream.
	ReqBytes, RespBytes int64
	// Retries counts the attempts before this one: replays on a fresh upstream connection after
	// the upstream refused the stream unprocessed, and the Retrier's retries.
	Retries int
	// Retried: this attempt failed and the stream went on to another one (Route.Retry); the
	// client saw nothing of it. Reason says how it failed.
	Retried bool
	Reason  RetryReason
	// TimedOut: the stream's deadline (Route.Timeout, grpc-timeout) passed.
	TimedOut bool
}

// ErrKeepalive is the error of an upstream connection closed because it did not answer a
// keepalive PING in time.
var ErrKeepalive = errors.New("upstream did not answer a keepalive ping in time")

// ErrDeadline is the error of a stream whose deadline passed.
var ErrDeadline = errors.New("request timed out")

// Dialer opens a connection to an upstream endpoint. It is called on its own goroutine, never on
// a read loop, and may block until ctx ends. A TLS dialer must return a connection that has
// completed its handshake and negotiated HTTP/2.
type Dialer func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	Router Router
	Dial   Dialer       // default: plain TCP (h2c)
	Logger *slog.Logger // default: slog.Default()

	// MaxConcurrentStreams is advertised to each client and enforced with REFUSED_STREAM.
	// Default 1000.
	MaxConcurrentStreams uint32
	// MaxHeaderListSize bounds a decoded header list (RFC 9113 §6.5.2 size). Larger requests get
	// 431; an encoded block more than twice as large closes the connection. Default 64 KiB.
	MaxHeaderListSize uint32
	// InitialWindow is the per-stream receive window the engine advertises on both sides, and so
	// the most it buffers per stream and direction. Default 256 KiB.
	InitialWindow uint32
	// ConnWindow is the per-connection receive window. Default 1 MiB.
	ConnWindow uint32

	// IdleTimeout closes a client connection with no streams for this long. Default 5 min.
	IdleTimeout time.Duration
	// UpstreamIdleTimeout closes a pooled upstream connection with no streams for this long.
	// Default 90 s.
	UpstreamIdleTimeout time.Duration
	// UpstreamKeepalive pings an upstream connection that has streams but has been silent this
	// long; no answer within another UpstreamKeepalive closes it (ErrKeepalive). Default 30 s:
	// an application's gRPC server (grpc-go) counts pings more frequent than its keepalive
	// enforcement allows (5 min without data) and closes the connection after a few, so an
	// ordinary upstream is pinged rarely, and only while it holds streams.
	UpstreamKeepalive time.Duration
	// PeerKeepalive, if set, says which upstreams tolerate frequent pings (another Detour
	// proxy does): a connection to one is pinged after PeerKeepaliveInterval of silence, idle or
	// busy, and closed when a PING goes unanswered for PeerKeepaliveTimeout, so a black-holed
	// peer is found within their sum plus the janitor's tick. Defaults 1 s and 2 s.
	PeerKeepalive                               func(addr netip.AddrPort) bool
	PeerKeepaliveInterval, PeerKeepaliveTimeout time.Duration
	// OnUpstreamFailure, if set, is told of an endpoint found unreachable: a dial that failed, or
	// a connection closed for want of a keepalive answer. It is called with no engine locks
	// held and must not block: the proxy marks the endpoint down for every pick with it.
	OnUpstreamFailure func(addr netip.AddrPort, err error)
	// DialTimeout bounds one upstream dial, and then again the wait for the upstream's first
	// SETTINGS frame: a new connection takes no stream before they arrive, and one that does
	// not get them in time fails the streams waiting for it like a failed dial. Default 5 s.
	DialTimeout time.Duration
	// WriteTimeout closes a connection whose queued output the socket has not taken any of for
	// this long: a peer that stopped reading. (It stalls no other connection meanwhile: what it
	// does not take waits in its own bounded output queue.) Default 15 s.
	WriteTimeout time.Duration

	// QueueReroute is how long a stream with a Retrier waits for a connection still being
	// dialled before it is sent elsewhere (RetryDialFailed: nothing of it went upstream), so a
	// peer that drops SYNs costs a request this much, not DialTimeout. Default 1 s.
	QueueReroute time.Duration

	// MaxConnsPerEndpoint bounds pooled connections per upstream endpoint. Default 4.
	MaxConnsPerEndpoint int
	// MaxQueuedPerEndpoint bounds streams waiting for an upstream connection or a free stream
	// slot; beyond it new streams fail with UNAVAILABLE. Default 1024.
	MaxQueuedPerEndpoint int
	// MaxReplayBytes is how much request body per stream the engine keeps so it can send the
	// request again: a replay of a request refused unprocessed, or a retry (Route.Retry). A
	// larger request is not retried once its first body byte went upstream. Default 64 KiB;
	// negative disables replays.
	MaxReplayBytes int
	// MaxRetries bounds replays per stream. Default 2.
	MaxRetries int

	// ResetRate and ResetBurst bound client RST_STREAM frames on live streams (rapid-reset
	// attacks, CVE-2023-44487): a token bucket of ResetBurst refilled at ResetRate per second;
	// when it runs dry the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed.
	// Defaults 100/s and 200.
	ResetRate  float64
	ResetBurst int

	// OnPanic, if set, is told of every panic the engine recovered from (see Panic), after it
	// was logged with its stack and before the connection it happened on is torn down. It is
	// called on the goroutine that panicked and must not block; the proxy counts with it.
	OnPanic func(Panic)
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
	def32 := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def32(&c.MaxConcurrentStreams, 1000)
	def32(&c.MaxHeaderListSize, 64<<10)
	def32(&c.InitialWindow, 256<<10)
	def32(&c.ConnWindow, 1<<20)
	if c.InitialWindow > 1<<31-1 {
		c.InitialWindow = 1<<31 - 1
	}
	if c.ConnWindow > 1<<31-1 {
		c.ConnWindow = 1<<31 - 1
	}
	if c.ConnWindow < 65535 {
		c.ConnWindow = 65535
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defDur(&c.IdleTimeout, 5*time.Minute)
	defDur(&c.UpstreamIdleTimeout, 90*time.Second)
	defDur(&c.UpstreamKeepalive, 30*time.Second)
	defDur(&c.PeerKeepaliveInterval, time.Second)
	defDur(&c.PeerKeepaliveTimeout, 2*time.Second)
	defDur(&c.DialTimeout, 5*time.Second)
	defDur(&c.WriteTimeout, 15*time.Second)
	defDur(&c.QueueReroute, time.Second)
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defInt(&c.MaxConnsPerEndpoint, 4)
	defInt(&c.MaxQueuedPerEndpoint, 1024)
	defInt(&c.MaxReplayBytes, 64<<10)
	defInt(&c.MaxRetries, 2)
	defInt(&c.ResetBurst, 200)
	if c.ResetRate == 0 {
		c.ResetRate = 100
	}
}
