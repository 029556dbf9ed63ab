// Package admin serves the proxy's admin port (7190): liveness, readiness, Prometheus metrics,
// the JSON debug endpoints the debugging CLI reads, and /shutdown for Jobs. The port is never
// redirected by init. /live, /ready and /metrics answer anyone who reaches the pod (the kubelet,
// Prometheus); /debug/* and /shutdown answer callers on the pod's loopback only, because they
// show the mesh's topology (which the controller serves only to proven identities) and stop
// the proxy. The debugging CLI and kubectl port-forward enter the pod's namespace and connect
// from loopback, so they still reach them.
package admin

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config wires the admin endpoints to the proxy. Each function is called on an HTTP server
// goroutine, per request, and must be safe for concurrent use.
type Config struct {
	Registry *prometheus.Registry
	// Ready returns nil once the proxy can serve traffic, otherwise why not.
	Ready func() error
	// Debug maps a name under /debug/ to a function that returns its JSON document.
	Debug map[string]func(r *http.Request) any
	// Streams maps a name under /debug/ to a handler that streams its answer (the tap).
	Streams map[string]http.Handler
	// Shutdown starts a graceful shutdown; /shutdown calls it once per request.
	Shutdown func()
	Logger   *slog.Logger
}

// Handler returns the admin HTTP handler.
func Handler(c Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "live"})
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := c.Ready(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"ready": true})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.Registry, promhttp.HandlerOpts{}))

	// Everything under /debug/, a path that does not exist included (a caller from elsewhere
	// learns nothing, not even which documents there are), and /shutdown.
	local := http.NewServeMux()
	for name, fn := range c.Debug {
		local.HandleFunc("GET /debug/"+name, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, fn(r))
		})
	}
	for name, h := range c.Streams {
		local.Handle("GET /debug/"+name, h)
	}
	local.HandleFunc("POST /shutdown", func(w http.ResponseWriter, r *http.Request) {
		if c.Shutdown == nil {
			writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "shutdown is not wired"})
			return
		}
		c.Logger.Info("shutdown requested on the admin port", "from", r.RemoteAddr)
		c.Shutdown()
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "draining"})
	})
	mux.Handle("/debug/", loopbackOnly(local))
	mux.Handle("/shutdown", loopbackOnly(local))
	return mux
}

// loopbackOnly serves h to callers on loopback and 403 to everyone else, the pod's own
// addresses included: a connection from another pod or the node never comes from loopback.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fromLoopback(r) {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": r.URL.Path +
				" answers on the pod's loopback only: use the debugging CLI on the node or kubectl port-forward, which connect from inside the pod"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// NewServer returns an http.Server for the admin handler with timeouts fit for a port that
// any pod on the network can reach.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}
