package proxy

// Connection limit defaults. A client connection costs the proxy up to six files: its socket,
// the upstream socket, and for an opaque relay the two pipes splice(2) holds while it waits for
// bytes (measured: BenchmarkIdleConnections reports files per connection); an HTTP/2 one costs
// one, its upstreams being pooled. The default leaves the worst case room below RLIMIT_NOFILE,
// so the proxy refuses a connection before it runs out of files for the ones it serves.
const (
	maxConnectionsCeiling = 100_000
	filesPerConnection    = 6
	filesReserved         = 256 // listeners, the admin port, the controller, logs, dials in flight
)

// DefaultMaxConnections is the connection cap when none is configured: what the file limit
// allows at six files a connection, at most 100000, at least 64.
func DefaultMaxConnections() int {
	limit, ok := fileLimit()
	if !ok {
		return maxConnectionsCeiling
	}
	return connectionsFor(limit)
}

func connectionsFor(fileLimit uint64) int {
	n := (int64(min(fileLimit, 1<<40)) - filesReserved) / filesPerConnection
	return int(min(max(n, 64), maxConnectionsCeiling))
}
