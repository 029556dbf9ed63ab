// Package http1 is the HTTP/1.1 forwarding engine of `detour proxy`.
//
// It exists so that HTTP/1.x traffic is balanced per request, not per connection: it serves a
// client's keep-alive connection (already accepted, its original destination known, its first
// bytes sniffed and replayed) and sends every request to the upstream endpoint the Router picks
// for that request, over keep-alive pools of upstream connections shared by all client
// connections. One client connection fans out to many servers.
//
// It is a lean loop over net/textproto and http.ReadResponse rather than http.Server plus
// httputil.ReverseProxy because the forwarder needs things those hide: the raw framing headers
// (to refuse a request that carries both Content-Length and Transfer-Encoding, which net/http
// silently accepts), an exact Done per request, an upgrade that becomes an opaque relay only when
// the client asked for it, and a path with no per-request header-map copies or writer goroutine.
// The design:
//
//   - The goroutine that calls ServeConn reads requests, calls the Router, writes the request head
//     upstream, reads the response and streams it back. Nothing is buffered beyond one copy
//     buffer: bodies stream in both directions.
//   - A request body that is not already in the read buffer is copied upstream by one goroutine
//     per request, so an upstream may answer before it has read the body (100-continue, early
//     errors). After the body (or at once, for a request without one) the same goroutine watches
//     the client connection, so a client that goes away cancels its upstream request by closing
//     the upstream connection.
//   - Messages are re-framed, never passed through: the engine parses the client's framing
//     strictly (RFC 9112 §6) and writes its own Content-Length or chunked encoding upstream and
//     back, so a framing ambiguity cannot reach a server behind the mesh (request smuggling).
//   - Hop-by-hop fields (RFC 9110 §7.6.1) are removed in both directions; Host is kept, and no
//     X-Forwarded-For is added: the proxy is transparent.
//   - An upstream connection is reused only after a complete exchange that left it in a known
//     state, and checked for a peer close before reuse; a bodyless idempotent request that finds
//     its pooled connection dead is replayed once on a fresh one.
//   - A Route with a Retrier (exchange.go mayAgain, ask, next) may send a failed request to
//     another endpoint: after a failed dial, a 5xx held back before any of it reached the
//     client, or a connection lost before a response head. Only a request that can go whole:
//     its Content-Length body (up to Config.MaxReplayBytes) is kept as it is forwarded; a
//     chunked or larger one is not retried once its first byte was read. The Retrier (the
//     proxy's resilience policy, shared with the HTTP/2 engine) decides whether and where.
//   - Route.Timeout closes the upstream connection in flight at the deadline (an HTTP/1.1
//     request cannot be cancelled otherwise) and answers 504.
//
// Lock order: clientConn.mu and pool.mu are each taken alone. Router.Route and Route.Done run on
// the connection's goroutine with no engine locks held.
package http1
