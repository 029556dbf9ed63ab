// Package report pushes the proxy's request metrics to the controller (api/telemetrypb), so the
// controller can show the mesh (detour stat, the dashboard) without scraping every pod. It reads
// the proxy's own Prometheus registry, the same numbers /metrics serves, and sends only what
// changed: each interval, the routes that saw requests finish, as deltas.
package report

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/detourmesh/detour/api/telemetrypb"
	"github.com/detourmesh/detour/proxy/metrics"
)

// DefaultInterval is how often a proxy reports: the controller keeps 10 s resolution.
const DefaultInterval = 10 * time.Second

// maxRoutesPerMessage splits a report of more routes into several messages: the controller
// refuses a message of more than 5,000 (controller/telemetry).
const maxRoutesPerMessage = 4096

// Config configures Run. Conn, Gatherer and Proxy are required.
type Config struct {
	// Conn is the proxy's connection to the controller (the one discovery uses), with its
	// credentials: the controller authenticates a report as it does a discovery stream.
	Conn grpc.ClientConnInterface
	// Gatherer is the proxy's registry (proxy/metrics).
	Gatherer prometheus.Gatherer
	// Proxy says who reports; its Identity is also sent as the claim the controller's
	// throttle counts failed proofs under.
	Proxy *telemetrypb.Proxy
	// Interval between reports; default DefaultInterval.
	Interval time.Duration
	// Flush, once closed, makes Run send what was counted since its last report and return:
	// the proxy closes it when it has stopped serving, so the requests of its last interval
	// (its drain included) reach the controller before the pod goes. Nil: never.
	Flush <-chan struct{}
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Run reports every Interval until ctx is done, starting a new stream (with backoff) whenever
// one fails. It returns nil when ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Conn == nil || cfg.Gatherer == nil || cfg.Proxy == nil {
		return errors.New("report: Conn, Gatherer and Proxy are required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	client := telemetrypb.NewTelemetryClient(cfg.Conn)
	sum := NewSummarizer()
	// The first summary is a baseline: what was counted before reporting started is not news.
	if fams, err := cfg.Gatherer.Gather(); err == nil {
		sum.Next(fams)
	}
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	var delay time.Duration
	logged := ""
	for ctx.Err() == nil {
		sent, err := stream(ctx, client, cfg, sum, tick.C)
		if ctx.Err() != nil || errors.Is(err, errFlushed) {
			return nil
		}
		if sent {
			delay = 0 // the controller took reports: a new outage starts the backoff afresh
		}
		if msg := err.Error(); msg != logged { // one line per distinct problem
			logged = msg
			cfg.Logger.Warn("telemetry report stream to the controller lost; reconnecting", "err", msg)
		}
		delay = min(max(delay*2, cfg.Interval/4), 4*cfg.Interval)
		t := time.NewTimer(time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64())))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-cfg.Flush: // no stream to flush on: what was counted is lost
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	return nil
}

// errFlushed ends a stream that sent its last report because Flush was closed.
var errFlushed = errors.New("report: flushed")

// stream runs one Report stream until a send fails or ctx ends; sent says whether a report
// went out. The routes of a report whose send failed are lost: the next stream's first report
// covers only the time since.
func stream(ctx context.Context, client telemetrypb.TelemetryClient, cfg Config, sum *Summarizer, tick <-chan time.Time) (sent bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if id := cfg.Proxy.GetIdentity(); id != "" {
		sctx = metadata.AppendToOutgoingContext(sctx, "detour-identity", id) // controller/identity.ClaimKey
	}
	st, err := client.Report(sctx)
	if err != nil {
		return false, err
	}
	first := true
	last := time.Now()
	for {
		final := false
		select {
		case <-ctx.Done():
			st.CloseAndRecv()
			return sent, ctx.Err()
		case <-tick:
		case <-cfg.Flush:
			final = true
		}
		fams, err := cfg.Gatherer.Gather()
		if err != nil {
			cfg.Logger.Debug("gathering metrics for the report", "err", err)
		}
		now := time.Now()
		routes := sum.Next(fams)
		interval := uint32(now.Sub(last).Milliseconds())
		last = now
		// One message per chunk of routes, the later ones covering no time of their own.
		for len(routes) > 0 || interval > 0 {
			n := min(len(routes), maxRoutesPerMessage)
			req := &telemetrypb.ReportRequest{UnixMs: now.UnixMilli(), IntervalMs: interval, Routes: routes[:n]}
			routes, interval = routes[n:], 0
			if first {
				req.Proxy, req.LatencyBounds = cfg.Proxy, sum.Bounds()
			}
			if err := st.Send(req); err != nil {
				_, rerr := st.CloseAndRecv() // the status says why
				if rerr != nil {
					return sent, rerr
				}
				return sent, err
			}
			first, sent = false, true
		}
		if final {
			st.CloseAndRecv()
			return sent, errFlushed
		}
	}
}

// Summarizer turns successive gathers of the proxy's registry into per-route deltas. It is not
// safe for concurrent use.
type Summarizer struct {
	prev   map[routeKey]counts
	bounds []float64
}

type routeKey struct {
	inbound                   bool
	authority, endpoint, peer string
}

type counts struct {
	requests, failures uint64
	latency            []uint64 // cumulative, as Prometheus keeps them
}

// NewSummarizer returns a Summarizer with no history: its first Next reports every count.
func NewSummarizer() *Summarizer { return &Summarizer{prev: map[routeKey]counts{}} }

// Bounds returns the latency bucket bounds of the proxy's histogram, as the last Next read
// them; before any request, proxy/metrics's.
func (s *Summarizer) Bounds() []float64 {
	if s.bounds == nil {
		return metrics.LatencyBuckets
	}
	return s.bounds
}

// Next returns the routes whose counts grew since the last call, with the growth. A series that
// went down (deleted by metrics.Forget and made again) counts from zero.
func (s *Summarizer) Next(fams []*dto.MetricFamily) []*telemetrypb.Route {
	cur := make(map[routeKey]counts, len(s.prev))
	for _, f := range fams {
		switch f.GetName() {
		case "detour_requests_total":
			for _, m := range f.GetMetric() {
				k := key(m)
				c := cur[k]
				c.requests += uint64(m.GetCounter().GetValue())
				cur[k] = c
			}
		case "detour_responses_total":
			for _, m := range f.GetMetric() {
				if label(m, "classification") != "failure" {
					continue
				}
				k := key(m)
				c := cur[k]
				c.failures += uint64(m.GetCounter().GetValue())
				cur[k] = c
			}
		case "detour_response_latency_seconds":
			for _, m := range f.GetMetric() {
				h := m.GetHistogram()
				k := key(m)
				c := cur[k]
				c.latency = make([]uint64, len(h.GetBucket())+1)
				if s.bounds == nil || len(s.bounds) != len(h.GetBucket()) {
					s.bounds = make([]float64, 0, len(h.GetBucket()))
					for _, b := range h.GetBucket() {
						s.bounds = append(s.bounds, b.GetUpperBound())
					}
				}
				for i, b := range h.GetBucket() {
					c.latency[i] = b.GetCumulativeCount()
				}
				c.latency[len(h.GetBucket())] = h.GetSampleCount()
				cur[k] = c
			}
		}
	}
	var out []*telemetrypb.Route
	for k, c := range cur {
		p, ok := s.prev[k]
		if ok && (c.requests < p.requests || c.failures < p.failures) {
			p, ok = counts{}, false // a reset
		}
		if c.requests == p.requests {
			continue
		}
		r := &telemetrypb.Route{Inbound: k.inbound, Authority: k.authority, Endpoint: k.endpoint, PeerIdentity: k.peer,
			Requests: c.requests - p.requests, Failures: c.failures - p.failures}
		if len(c.latency) > 0 {
			// Cumulative growth, then per bucket.
			grow := make([]uint64, len(c.latency))
			for i := range c.latency {
				var before uint64
				if ok && i < len(p.latency) {
					before = p.latency[i]
				}
				if c.latency[i] >= before {
					grow[i] = c.latency[i] - before
				}
			}
			r.Latency = make([]uint64, len(grow))
			var below uint64
			for i, g := range grow {
				r.Latency[i] = g - min(g, below)
				below = max(below, g)
			}
		}
		out = append(out, r)
	}
	s.prev = cur
	return out
}

func key(m *dto.Metric) routeKey {
	return routeKey{
		inbound:   label(m, "direction") == "inbound",
		authority: label(m, "authority"),
		endpoint:  label(m, "endpoint"),
		peer:      label(m, "peer_identity"),
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
