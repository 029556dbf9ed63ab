// Package admin serves the proxy's admin port (7190): liveness, readiness, Prometheus metrics,
// the JSON debug endpoints the debugging CLI reads, and /shutdown for Jobs. The port is never
// redirected by init, so an operator on the node can always reach it.
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
	for name, fn := range c.Debug {
		mux.HandleFunc("GET /debug/"+name, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, fn(r))
		})
	}
	for name, h := range c.Streams {
		mux.Handle("GET /debug/"+name, h)
	}
	mux.HandleFunc("POST /shutdown", func(w http.ResponseWriter, r *http.Request) {
		if !fromLoopback(r) {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "/shutdown is accepted from loopback only"})
			return
		}
		if c.Shutdown == nil {
			writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "shutdown is not wired"})
			return
		}
		c.Logger.Info("shutdown requested on the admin port", "from", r.RemoteAddr)
		c.Shutdown()
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "draining"})
	})
	return mux
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
