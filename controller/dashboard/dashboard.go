// Package dashboard serves the controller's web dashboard and its JSON under /api/, from the
// telemetry store (controller/telemetry): the service graph, every service's, deployment's and
// pod's figures, live charts and how each service's traffic is split over its replicas.
//
// The front end is hand-written HTML, CSS and JavaScript drawing SVG, embedded in the binary:
// it works offline and behind any proxy, needs no CDN, and `make build` needs no Node toolchain
// or bundler. The views are a few tables, a graph and line charts refreshed every two seconds,
// little enough that a framework would add more code than it saves.
package dashboard

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/detourmesh/detour/controller/telemetry"
)

// DefaultListen is the dashboard's address (DESIGN.md): loopback, reached with detour dashboard.
const DefaultListen = "127.0.0.1:7080"

//go:embed assets
var assets embed.FS

// Handler serves the dashboard, /api/ and the controller's /metrics (registry).
func Handler(store *telemetry.Store, registry *prometheus.Registry, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	static, _ := fs.Sub(assets, "assets")
	index, _ := fs.ReadFile(static, "index.html")
	mux := http.NewServeMux()
	page := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(index)
	}
	// Every view has a URL; the page reads it and asks /api/ for the data.
	mux.HandleFunc("GET /{$}", page)
	mux.HandleFunc("GET /svc/{name}", page)
	mux.HandleFunc("GET /pod/{name}", page)
	mux.HandleFunc("GET /deploy/{name}", page)
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(static)))
	mux.HandleFunc("GET /api/stat", func(w http.ResponseWriter, r *http.Request) {
		q, err := statQuery(r)
		if err != nil {
			fail(w, err)
			return
		}
		st, err := store.Stat(q)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, st)
	})
	mux.HandleFunc("GET /api/top", func(w http.ResponseWriter, r *http.Request) {
		win, err := windowParam(r)
		if err != nil {
			fail(w, err)
			return
		}
		limit := 20
		if v := r.FormValue("limit"); v != "" {
			if limit, err = strconv.Atoi(v); err != nil || limit < 1 {
				fail(w, fmt.Errorf("limit %q: want a positive number", v))
				return
			}
		}
		reply(w, map[string]any{"window": win.String(), "routes": store.Top(win, limit)})
	})
	mux.HandleFunc("GET /api/graph", func(w http.ResponseWriter, r *http.Request) {
		win, err := windowParam(r)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, store.Graph(win))
	})
	mux.HandleFunc("GET /api/timeline", func(w http.ResponseWriter, r *http.Request) {
		res, err := telemetry.ParseResource(r.FormValue("resource"))
		if err == nil && res.Name == "" {
			err = fmt.Errorf("resource %q: name one, e.g. svc/NAME", r.FormValue("resource"))
		}
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, map[string]any{"resource": res.String(), "resolution": telemetry.Resolution.String(), "points": store.Timeline(res)})
	})
	if registry != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{ErrorLog: slogPrinter{log}}))
	}
	return mux
}

func statQuery(r *http.Request) (telemetry.Query, error) {
	var q telemetry.Query
	var err error
	if q.Resource, err = telemetry.ParseResource(r.FormValue("resource")); err != nil {
		return q, err
	}
	for _, p := range []struct {
		name string
		into *telemetry.Resource
	}{{"from", &q.From}, {"to", &q.To}} {
		if v := r.FormValue(p.name); v != "" {
			if *p.into, err = telemetry.ParseResource(v); err != nil {
				return q, fmt.Errorf("%s: %w", p.name, err)
			}
		}
	}
	q.Window, err = windowParam(r)
	return q, err
}

func windowParam(r *http.Request) (time.Duration, error) {
	v := r.FormValue("window")
	if v == "" {
		return time.Minute, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < telemetry.Resolution || d > telemetry.Window {
		return 0, fmt.Errorf("window %q: want a duration from %s to %s, e.g. 1m", v, telemetry.Resolution, telemetry.Window)
	}
	return d, nil
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) {
	p.log.Warn("serving /metrics", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}
