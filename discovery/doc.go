// Package discovery is the mesh's model of where traffic may go: which services exist, which
// destination addresses and authorities select them, and which endpoints (with their identities,
// weights and zones) serve them.
//
// It lives outside proxy/ because both sides speak it: the controller builds it from its sources
// and streams it, the proxy routes by it, and neither imports the other. Every part of the proxy
// asks one immutable question — "what is behind this destination?" — of one immutable value, the
// Snapshot, whatever produced it: the local discovery file (the embedded default, read by File),
// or the controller's Discovery service (proxy/resolve). A
// Snapshot never changes after it is built; a Source replaces it whole, so a connection that
// looked a service up keeps a consistent view while a reload happens under it, and lookups on the
// per-connection path are plain map reads with no locks and no allocations.
//
// The discovery file format is a contract (shared/DESIGN.md "Discovery file"); Parse is strict
// about it: unknown fields and bad values are errors that name the file, the line and the field,
// like a compiler, so an operator can fix the file without guessing.
package discovery
