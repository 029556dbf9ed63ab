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
//   - Nobody waits for a peer's socket but that peer's own writer. Whoever holds a frame appends
//     it to the destination connection's output queue under that connection's write mutex (wmu),
//     and a read loop flushes the connections it wrote to once its own input has no complete
//     frame buffered, so bursts become one syscall. A flush is a non-blocking write: when the
//     socket takes everything (the fast path) it costs what a plain write does. What the socket
//     does not take stays in the queue, and a writer goroutine of that connection, started for
//     the backlog and gone when it is written, waits for the socket with wmu released (out.go).
//     TLS over a socket rawsock wrapped (the mesh's mutual TLS) is written through crypto/tls at
//     once, and what the socket does not take of its records waits beneath it (rawsock.Defer)
//     for the same writer; only a connection that can be tried neither way has its writer run
//     for every flush. So one peer that stops reading stalls only its own streams: the read
//     loops and the janitor keep serving everyone else.
//   - The output queue is bounded. DATA enters it only while it holds less than maxQueuedData
//     (64 KiB); past that a stream waits on the connection's blocked list as if the peer's window
//     were closed, its bytes stay in its own buffer (bounded by the window the engine advertised,
//     since the engine grants the source only what it wrote) and the writer resumes it when the
//     queue has drained. Frames without flow control (HEADERS, RST_STREAM, WINDOW_UPDATE, PING,
//     SETTINGS, GOAWAY) are always queued; a connection whose queue exceeds maxQueued (1 MiB) is
//     closed, and one whose writer makes no progress for WriteTimeout is closed by the janitor.
//   - No goroutine per stream. A stream is a small struct linking a client stream id to an upstream
//     stream id; its state is guarded by its own mutex.
//   - DATA payloads go from the reader's buffer straight into the destination's output queue.
//     Bytes are copied into a pooled per-stream buffer only when the destination's flow-control
//     window (or its queue) is full, or (request side, up to Config.MaxReplayBytes) so a stream
//     can be sent again: replayed after a refusal, or retried on another endpoint.
//   - Plain TCP sockets are read and written with raw non-blocking system calls through their
//     RawConn (proxy/rawsock), so that an idle-between-requests proxy does not wake Go's sysmon
//     thread on every request.
//   - An idle connection holds no buffer: read and write buffers come from a pool when there are
//     bytes to move and go back when they are consumed or written, and a read waiting for input
//     holds none (in.go). Idle connections cost a few KB each, mostly the read goroutine's stack.
//   - Flow control is end to end: the engine grants WINDOW_UPDATE to a sender only for bytes it has
//     forwarded, so a slow reader on one side slows the writer on the other, and buffered bytes per
//     stream never exceed the window the engine advertised.
//   - Failures are the Router's to judge, the engine's to act on: when an attempt fails in a
//     way that lets the request be sent again (a failed dial, a refusal, a response held back
//     for its 5xx or gRPC status, a reset, all with the request's bytes at hand), the Route's
//     Retrier says where it goes next; the engine detaches the stream from the failed upstream
//     stream and opens it anew, with a detour-attempt header (api.go, stream.go againLocked).
//     Deadlines (Route.Timeout, grpc-timeout) and keepalive PINGs (the janitor) end what hangs.
//
// The engine is the HTTP/2 server its clients see and the client its upstreams see, so it holds
// both to RFC 9113 and forwards only well-formed messages: readframe.go adds the frame checks the
// Framer leaves to its caller, streamstate.go says what frames on closed or idle streams deserve,
// headers.go is the one field validator for requests, responses and trailers. The
// rfc9113_*_test.go files test each rule at the frame level. A panic ends only the connection
// it happened on (panic.go).
//
// Lock order: stream.mu, then a connection's stream-map mutex, then a connection's write mutex;
// a pool's mutex is always taken alone. No lock is held across a socket write that may wait: a
// writer takes wmu only to take the queue, and resumes blocked streams with no lock held.
// Router.Route and Route.Done run without engine locks held; Retrier.Retry runs with the
// stream's mutex held and must take none of the engine's.
package h2
