// Package h2 is the HTTP/2 (gRPC) forwarding engine of `detour proxy`.
//
// It exists so that gRPC is balanced per request, not per connection: it terminates a client's
// HTTP/2 connection and forwards each stream on its own to an upstream endpoint the Router picks
// for that request, over pooled, multiplexed upstream HTTP/2 connections (h2c, or TLS through the
// Dialer hook). One client connection fans out to many servers.
//
// It works at the frame level (golang.org/x/net/http2's Framer and hpack, used directly) because a
// forwarder built on net/http's ReverseProxy costs a goroutine hand-off, a header map and body copies
// per request. The design:
//
//   - One read goroutine per connection, downstream and upstream. Nothing else reads.
//   - No writer goroutine: whoever holds a frame writes it into the destination connection's
//     bufio.Writer under that connection's write mutex, and a read loop flushes the connections it
//     wrote to once its own input has no complete frame buffered. Bursts become one syscall.
//   - No goroutine per stream. A stream is a small struct linking a client stream id to an upstream
//     stream id; its state is guarded by its own mutex.
//   - DATA payloads go from the reader's buffer straight into the destination's write buffer. Bytes
//     are copied into a pooled per-stream buffer only when the destination's flow-control window is
//     closed, or (request side, up to Config.MaxReplayBytes) so a stream refused by the upstream can
//     be replayed on another connection.
//   - Plain TCP sockets are read and written with raw non-blocking system calls through their
//     RawConn (sock_linux.go), so that an idle-between-requests proxy does not wake Go's sysmon
//     thread on every request.
//   - Flow control is end to end: the engine grants WINDOW_UPDATE to a sender only for bytes it has
//     forwarded, so a slow reader on one side slows the writer on the other, and buffered bytes per
//     stream never exceed the window the engine advertised.
//
// The engine is the HTTP/2 server its clients see and the client its upstreams see, so it holds
// both to RFC 9113 and forwards only well-formed messages: readframe.go adds the frame checks the
// Framer leaves to its caller, streamstate.go says what frames on closed or idle streams deserve,
// headers.go is the one field validator for requests, responses and trailers. The
// rfc9113_*_test.go files test each rule at the frame level. A panic ends only the connection
// it happened on (panic.go).
//
// Lock order: stream.mu, then a connection's stream-map mutex, then a connection's write mutex;
// a pool's mutex is always taken alone. Router.Route and Route.Done run without engine locks held.
package h2
