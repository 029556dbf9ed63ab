// Package metrics holds the proxy's Prometheus metrics. Label handles are resolved once per
// route and cached, so the per-request path pays for a few atomic adds, not for hashing label
// values on every request. The series of an endpoint that left discovery are deleted on the
// proxy's word (Forget), so a proxy's metrics do not grow with every rollout's pod addresses.
package metrics

import (
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Directions of traffic, as the direction label spells them.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// LatencyBuckets are the upper bounds, in seconds, of detour_response_latency_seconds (and of
// the proxy's reports to the controller, proxy/report).
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Metrics is every metric of one proxy. It is safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	open      *prometheus.GaugeVec
	conns     *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	detect    *prometheus.CounterVec
	denials   *prometheus.CounterVec
	refused   *prometheus.CounterVec
	panics    *prometheus.CounterVec
	retries   *prometheus.CounterVec
	exhausted *prometheus.CounterVec
	ejections *prometheus.CounterVec
	timeouts  *prometheus.CounterVec

	routes sync.Map // routeKey -> *Route
	// mu orders the creation of a Route with Forget, so a route is never cached with series
	// Forget has just deleted. The per-request path (a cached Route) does not take it.
	mu sync.Mutex
}

type routeKey struct {
	direction, authority, peer string
	endpoint                   netip.AddrPort
}

// New registers Detour's metrics, and the Go and process collectors, in a fresh registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_requests_total",
			Help: "HTTP requests and gRPC calls forwarded, by direction, authority and endpoint.",
		}, []string{"direction", "authority", "endpoint", "tls", "peer_identity"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_responses_total",
			Help: "Responses by HTTP status code and grpc-status (empty when none); classification is success or failure.",
		}, []string{"direction", "authority", "endpoint", "tls", "peer_identity", "status_code", "grpc_status", "classification"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "detour_response_latency_seconds",
			Help:    "Time from a request's headers to the end of its response.",
			Buckets: LatencyBuckets,
		}, []string{"direction", "authority", "endpoint", "tls", "peer_identity"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "detour_tcp_open_connections",
			Help: "Client connections the proxy holds open, by direction and detected protocol.",
		}, []string{"direction", "protocol"}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_tcp_connections_total",
			Help: "Client connections accepted, by direction and detected protocol.",
		}, []string{"direction", "protocol"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_tcp_bytes_total",
			Help: "Bytes relayed on opaque TCP connections, by direction and peer that sent them (client or server).",
		}, []string{"direction", "sender"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_authz_denials_total",
			Help: "Requests and connections refused by policy, by direction, destination port and peer identity (empty: plaintext).",
		}, []string{"direction", "port", "peer_identity"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_tcp_connections_refused_total",
			Help: "Client connections closed at accept, by direction and reason (limit: the proxy holds --max-connections).",
		}, []string{"direction", "reason"}),
		detect: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_protocol_detections_total",
			Help: "Protocol detection results by direction, destination port and result (http1, http2, tls, opaque, timeout, skipped).",
		}, []string{"direction", "port", "result"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_engine_panics_total",
			Help: "Panics a forwarding engine recovered from (each ended one connection or dial), by direction and engine.",
		}, []string{"direction", "engine"}),
	}
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_retries_total",
		Help: "Requests sent again to another endpoint after an attempt failed, by service, the endpoint that failed and why (dial_failed and refused: never reached the application, resent whatever the policy; status and reset: retried by the service's retry policy).",
	}, []string{"service", "endpoint", "reason"})
	m.exhausted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_retry_budget_exhausted_total",
		Help: "Retries the service's policy allowed but its retry budget refused: the failure went to the client.",
	}, []string{"service"})
	m.ejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_endpoint_ejections_total",
		Help: "Times an endpoint was ejected from picks by failure accrual or a failed connection.",
	}, []string{"service", "endpoint"})
	m.timeouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_request_timeouts_total",
		Help: "Requests ended by their deadline (the route's timeout or grpc-timeout): reset upstream and answered DEADLINE_EXCEEDED or 504.",
	}, []string{"service"})
	m.Registry.MustRegister(m.requests, m.responses, m.latency, m.open, m.conns, m.bytes, m.detect, m.denials, m.refused, m.panics,
		m.retries, m.exhausted, m.ejections, m.timeouts,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Route returns the metrics of requests in one direction to one authority and endpoint, with
// the peer's identity: the server's outbound, the client's inbound; "" for plaintext.
func (m *Metrics) Route(direction, authority string, endpoint netip.AddrPort, peer string) *Route {
	k := routeKey{direction, authority, peer, endpoint}
	if r, ok := m.routes.Load(k); ok {
		return r.(*Route)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.routes.Load(k); ok {
		return r.(*Route)
	}
	ep := endpoint.String()
	tls := strconv.FormatBool(peer != "")
	r := &Route{
		m:        m,
		labels:   [5]string{direction, authority, ep, tls, peer},
		requests: m.requests.WithLabelValues(direction, authority, ep, tls, peer),
		latency:  m.latency.WithLabelValues(direction, authority, ep, tls, peer),
	}
	m.routes.Store(k, r)
	return r
}

// Forget deletes every series of endpoint in direction (requests, responses, latency) and the
// routes that feed them, once discovery no longer has the endpoint. A request still in flight
// on a forgotten route is not counted when it ends: counting it would bring one series back,
// never to be deleted again. The caller waits a grace period before Forget, since a series that
// vanishes and comes back reads as a counter reset.
func (m *Metrics) Forget(direction string, endpoint netip.AddrPort) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routes.Range(func(key, r any) bool {
		if k := key.(routeKey); k.direction == direction && k.endpoint == endpoint {
			r.(*Route).forgotten.Store(true)
			m.routes.Delete(key)
		}
		return true
	})
	labels := prometheus.Labels{"direction": direction, "endpoint": endpoint.String()}
	m.requests.DeletePartialMatch(labels)
	m.responses.DeletePartialMatch(labels)
	m.latency.DeletePartialMatch(labels)
	if direction == Outbound {
		ep := prometheus.Labels{"endpoint": endpoint.String()}
		m.retries.DeletePartialMatch(ep)
		m.ejections.DeletePartialMatch(ep)
	}
}

// Retried counts one retry of a request to service after its attempt on endpoint failed.
func (m *Metrics) Retried(service string, endpoint netip.AddrPort, reason string) {
	m.retries.WithLabelValues(service, endpoint.String(), reason).Inc()
}

// BudgetExhausted counts a retry the budget refused.
func (m *Metrics) BudgetExhausted(service string) { m.exhausted.WithLabelValues(service).Inc() }

// Ejected counts an endpoint's ejection.
func (m *Metrics) Ejected(service string, endpoint netip.AddrPort) {
	m.ejections.WithLabelValues(service, endpoint.String()).Inc()
}

// TimedOut counts a request ended by its deadline.
func (m *Metrics) TimedOut(service string) { m.timeouts.WithLabelValues(service).Inc() }

// Route is the metrics of one direction, authority and endpoint.
type Route struct {
	m         *Metrics
	labels    [5]string
	requests  prometheus.Counter
	latency   prometheus.Observer
	responses sync.Map // responseKey -> prometheus.Counter
	forgotten atomic.Bool
}

type responseKey struct {
	status, grpc int
	failed       bool
}

// Observe records one finished request. grpcStatus < 0 means the response had none.
func (r *Route) Observe(status, grpcStatus int, failed bool, d time.Duration) {
	if r.forgotten.Load() {
		return
	}
	r.requests.Inc()
	r.latency.Observe(d.Seconds())
	k := responseKey{status, grpcStatus, failed}
	c, ok := r.responses.Load(k)
	if !ok {
		code, grpc, class := "", "", "success"
		if status > 0 {
			code = strconv.Itoa(status)
		}
		if grpcStatus >= 0 {
			grpc = strconv.Itoa(grpcStatus)
		}
		if failed {
			class = "failure"
		}
		l := r.labels
		r.m.mu.Lock()
		if r.forgotten.Load() { // Forget ran since the check above
			r.m.mu.Unlock()
			return
		}
		c, _ = r.responses.LoadOrStore(k, r.m.responses.WithLabelValues(l[0], l[1], l[2], l[3], l[4], code, grpc, class))
		r.m.mu.Unlock()
	}
	c.(prometheus.Counter).Inc()
}

// ConnOpened counts a client connection and returns the function that marks it closed.
func (m *Metrics) ConnOpened(direction, protocol string) (closed func()) {
	m.conns.WithLabelValues(direction, protocol).Inc()
	g := m.open.WithLabelValues(direction, protocol)
	g.Inc()
	return g.Dec
}

// Bytes adds relayed bytes from the client and from the server of an opaque connection.
func (m *Metrics) Bytes(direction string, fromClient, fromServer int64) {
	m.bytes.WithLabelValues(direction, "client").Add(float64(fromClient))
	m.bytes.WithLabelValues(direction, "server").Add(float64(fromServer))
}

// Denied counts a request or connection refused by policy.
func (m *Metrics) Denied(direction string, port uint16, peer string) {
	m.denials.WithLabelValues(direction, strconv.Itoa(int(port)), peer).Inc()
}

// Refused counts a client connection closed at accept for reason.
func (m *Metrics) Refused(direction, reason string) {
	m.refused.WithLabelValues(direction, reason).Inc()
}

// Panicked counts a panic an engine ("h2") recovered from.
func (m *Metrics) Panicked(direction, engine string) {
	m.panics.WithLabelValues(direction, engine).Inc()
}

// Detected counts one protocol detection result on a destination port.
func (m *Metrics) Detected(direction string, port uint16, result string) {
	m.detect.WithLabelValues(direction, strconv.Itoa(int(port)), result).Inc()
}
