package admin

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestAdminEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "detour_test_total", Help: "a test counter"})
	reg.MustRegister(c)
	c.Add(3)
	var ready atomic.Bool
	var shutdowns atomic.Int32
	h := Handler(Config{
		Registry: reg,
		Ready: func() error {
			if !ready.Load() {
				return errors.New("discovery not loaded yet")
			}
			return nil
		},
		Debug:    map[string]func(*http.Request) any{"endpoints": func(*http.Request) any { return []string{"198.18.0.11:8080"} }},
		Shutdown: func() { shutdowns.Add(1) },
		Logger:   slog.New(slog.DiscardHandler),
	})
	do := func(method, path, remote string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	tests := []struct {
		name, method, path, remote string
		before                     func()
		status                     int
		body                       string
	}{
		{"live is always ok", "GET", "/live", "198.18.0.2:5000", nil, 200, `"status": "live"`},
		{"ready says why not", "GET", "/ready", "198.18.0.2:5000", nil, 503, `"reason": "discovery not loaded yet"`},
		{"ready once ready", "GET", "/ready", "198.18.0.2:5000", func() { ready.Store(true) }, 200, `"ready": true`},
		{"metrics in Prometheus text", "GET", "/metrics", "198.18.0.2:5000", nil, 200, "detour_test_total 3"},
		{"metrics answer another pod", "GET", "/metrics", "198.18.0.2:5000", nil, 200, "detour_test_total 3"},
		{"debug endpoints are JSON, on loopback", "GET", "/debug/endpoints", "127.0.0.1:5000", nil, 200, `"198.18.0.11:8080"`},
		{"debug endpoints on IPv6 loopback", "GET", "/debug/endpoints", "[::1]:5000", nil, 200, `"198.18.0.11:8080"`},
		{"debug endpoints are refused to another pod", "GET", "/debug/endpoints", "198.18.0.2:5000", nil, 403, "loopback only"},
		{"debug endpoints are refused to an IPv4-mapped pod address", "GET", "/debug/endpoints", "[::ffff:198.18.0.2]:5000", nil, 403, "loopback only"},
		{"a debug path that does not exist is refused alike", "GET", "/debug/secret", "198.18.0.2:5000", nil, 403, "loopback only"},
		{"a debug path that does not exist, on loopback", "GET", "/debug/secret", "127.0.0.1:5000", nil, 404, ""},
		{"shutdown from another pod is refused", "POST", "/shutdown", "198.18.0.2:5000", nil, 403, "loopback only"},
		{"shutdown from loopback drains", "POST", "/shutdown", "127.0.0.1:5000", nil, 202, "draining"},
		{"shutdown from IPv6 loopback drains", "POST", "/shutdown", "[::1]:5000", nil, 202, "draining"},
		{"shutdown is POST only", "GET", "/shutdown", "127.0.0.1:5000", nil, 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			w := do(tt.method, tt.path, tt.remote)
			if w.Code != tt.status || !strings.Contains(w.Body.String(), tt.body) {
				t.Fatalf("%s %s: %d %q, want %d with %q", tt.method, tt.path, w.Code, w.Body, tt.status, tt.body)
			}
			if (strings.HasPrefix(tt.path, "/debug") && w.Code != 404) || tt.path == "/ready" {
				var v any
				if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
					t.Fatalf("not JSON: %v", err)
				}
			}
		})
	}
	if n := shutdowns.Load(); n != 2 {
		t.Fatalf("%d shutdowns, want 2", n)
	}
}
