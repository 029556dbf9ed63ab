package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/proxy/balance"
	"github.com/detourmesh/detour/proxy/h2"
	"github.com/detourmesh/detour/proxy/http1"
	"github.com/detourmesh/detour/proxy/metrics"
	"github.com/detourmesh/detour/proxy/origdst"
	"github.com/detourmesh/detour/proxy/tap"
)

// Protocol names, as metrics and /debug/connections spell them.
const (
	protoHTTP1  = "http1"
	protoHTTP2  = "http2"
	protoTLS    = "tls"
	protoOpaque = "opaque"
	protoMesh   = "mesh-tls" // TLS from another Detour proxy (ALPN detour/*), terminated here
)

// handle serves one accepted client connection to its end.
func (p *Proxy) handle(ctx context.Context, c *net.TCPConn, direction string) {
	defer c.Close()
	client := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst, err := origdst.Lookup(c)
	if err != nil {
		p.log.Warn("original destination", "direction", direction, "client", client, "err", err)
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if err := p.refuse(direction, dst); err != nil {
		p.metrics.Detected(direction, dst.Port(), "refused")
		p.log.Warn("refused connection", "direction", direction, "client", client, "dst", dst, "reason", err)
		return
	}
	var svc *service
	if direction == metrics.Outbound {
		var release func()
		svc, release = p.outboundService(ctx, dst)
		if release != nil {
			defer release()
		}
	}
	name := ""
	if svc != nil {
		name = svc.Name
	}
	info := p.conns.add(c, direction, client, dst, name)
	defer p.conns.remove(info)

	proto, conn := p.protocol(direction, svc, dst, c)
	info.setProtocol(proto)
	defer p.metrics.ConnOpened(direction, proto)()
	if proto == protoMesh {
		p.serveMesh(ctx, conn, client, dst, info)
		return
	}
	p.serve(ctx, direction, proto, svc, conn, dst, "", info)
}

// outboundService returns the service dst selects, nil for none. With a discovery.Subscriber it
// holds the service in use until release is called (the connection's end), and when the
// service's endpoints are not known yet it waits for them up to the resolve timeout; past it,
// the service is returned without a balancer, so its requests fail rather than leave the mesh.
func (p *Proxy) outboundService(ctx context.Context, dst netip.AddrPort) (svc *service, release func()) {
	t := p.routes.current.Load()
	svc, entry := t.find(dst)
	if entry == nil || p.subscriber == nil {
		return svc, nil
	}
	release = p.subscriber.Use(entry.Name)
	if svc != nil {
		return svc, release
	}
	timer := time.NewTimer(p.cfg.ResolveTimeout)
	defer timer.Stop()
	for {
		select {
		case <-t.replaced:
		case <-timer.C:
			p.log.Warn("the endpoints of a service did not arrive in time; its requests fail until they do",
				"service", entry.Name, "dst", dst, "timeout", p.cfg.ResolveTimeout)
			return &service{Service: entry, authority: authority(entry)}, release
		case <-ctx.Done():
			return &service{Service: entry, authority: authority(entry)}, release
		}
		t = p.routes.current.Load()
		if svc, entry = t.find(dst); svc != nil || entry == nil {
			return svc, release // resolved, or the service left discovery: relayed as unknown
		}
	}
}

// serve hands a connection whose protocol is known to its forwarder. svc is the outbound
// destination's service (nil if none); peer is an inbound client's proven identity, "" for
// plaintext.
func (p *Proxy) serve(ctx context.Context, direction, proto string, svc *service, c net.Conn, dst netip.AddrPort, peer string, info *connInfo) {
	var err error
	switch {
	case proto == protoHTTP2 && direction == metrics.Outbound:
		p.warm(svc.Service) // a service detected as HTTP/2: connect to all its endpoints now
		err = p.h2out.ServeConnWith(ctx, c, dst, h2.ConnInfo{Owner: info})
	case proto == protoHTTP2:
		err = p.h2in.ServeConnWith(ctx, c, dst, h2.ConnInfo{Peer: peer, Owner: info})
	case proto == protoHTTP1 && direction == metrics.Outbound:
		err = p.h1out.ServeConn(ctx, c, dst)
	case proto == protoHTTP1:
		err = p.h1in.ServeConnWith(ctx, c, dst, http1.ConnInfo{Peer: peer})
	default:
		p.relayTCP(ctx, direction, svc, dst, c, peer)
	}
	if err != nil {
		p.log.Debug("connection ended", "direction", direction, "protocol", proto, "client", c.RemoteAddr(), "peer", peer, "dst", dst, "err", err)
	}
}

// refuse says why a connection must not be served: the inbound port is no open relay, and no
// connection may loop back into the proxy's own ports.
func (p *Proxy) refuse(direction string, dst netip.AddrPort) error {
	own := []uint16{p.cfg.InboundPort, p.cfg.OutboundPort, p.cfg.AdminPort}
	local := dst.Addr().IsLoopback() || p.local.has(dst.Addr())
	if local && slices.Contains(own, dst.Port()) {
		return fmt.Errorf("destination %s is the proxy itself", dst)
	}
	if direction == metrics.Inbound && !local {
		return fmt.Errorf("destination %s is not this pod: the inbound port is no open relay", dst)
	}
	return nil
}

// protocol decides how to serve a connection: by discovery's word, by an opaque port, or by
// its first bytes. A destination nobody knows is relayed untouched, without waiting for bytes.
func (p *Proxy) protocol(direction string, svc *service, dst netip.AddrPort, c *net.TCPConn) (string, net.Conn) {
	decided := func(proto, result string) (string, net.Conn) {
		p.metrics.Detected(direction, dst.Port(), result)
		return proto, c
	}
	if direction == metrics.Outbound {
		if svc == nil {
			return decided(protoOpaque, "unknown-destination")
		}
		switch svc.Protocol {
		case discovery.ProtocolHTTP2:
			return decided(protoHTTP2, "declared-http2")
		case discovery.ProtocolHTTP1:
			return decided(protoHTTP1, "declared-http1")
		case discovery.ProtocolOpaque:
			return decided(protoOpaque, "declared-opaque")
		}
	}
	if slices.Contains(p.cfg.OpaquePorts, dst.Port()) {
		return decided(protoOpaque, "opaque-port")
	}
	return p.sniff(direction, dst, c)
}

// outcome is how one request ended, in the terms the balancer and metrics need.
type outcome struct {
	status, grpcStatus int // grpcStatus < 0: none
	err                error
	upstream           bool // the failure is the endpoint's fault
	// took is the whole request, from its headers to the end of the response: what
	// detour_response_latency_seconds records (its help says so). Unlike linkerd2-proxy's
	// response_latency_ms, which stops at the response's first DATA (time to first byte), it
	// includes the time a response streams.
	took time.Duration
	// served is the endpoint's latency the balancer learns (balance.Pick.Done): from the request
	// going upstream to the response headers, or, if none came, to the end of the request (what
	// the endpoint kept the caller waiting for them). Never a stream's whole life: one long
	// server stream must not make a healthy endpoint look slow for minutes.
	served              time.Duration
	reqBytes, respBytes int64
	retried             bool // the attempt failed and the request went on to another
	timedOut            bool // the request's deadline passed
}

// endpointLatency is outcome.served from a result's times: response headers after, the whole
// request, and the part of it spent waiting for a connection.
func endpointLatency(headers, duration, queued time.Duration) time.Duration {
	if headers > 0 {
		return headers
	}
	return duration - queued
}

// failed classifies a request as Linkerd does: an error, a 5xx, or a gRPC status other than OK.
func (o outcome) failed() bool { return o.err != nil || o.status >= 500 || o.grpcStatus > 0 }

// picked is where the proxy sends one request, and what records how it ended.
type picked struct {
	addr    netip.AddrPort
	service string // the outbound destination's service; "" inbound
	peer    string // the identity mutual TLS proves: the endpoint's outbound, the client's inbound
	done    func(outcome)
}

// pickOutbound chooses the endpoint of dst's service for one request.
func (p *Proxy) pickOutbound(dst netip.AddrPort) (picked, *service, error) {
	svc, entry := p.routes.current.Load().find(dst)
	switch {
	case svc == nil && entry != nil:
		return picked{service: entry.Name}, nil, fmt.Errorf("service %s: its endpoints are not known yet (discovery has not answered)", entry.Name)
	case svc == nil:
		return picked{}, nil, fmt.Errorf("no service at %s any more", dst)
	}
	pick, err := svc.balancer.Pick()
	if err != nil {
		return picked{service: svc.Name}, svc, fmt.Errorf("service %s: %w", svc.Name, err)
	}
	svc.budget.Deposit()
	return p.outboundPicked(svc, pick), svc, nil
}

// outboundPicked is where a request (or a retry of it) goes once the balancer has chosen: it
// feeds the balancer each attempt's result and counts in metrics the attempt that answers the
// client.
func (p *Proxy) outboundPicked(svc *service, pick balance.Pick) picked {
	peer := ""
	if p.cfg.Identity != nil {
		peer = pick.Endpoint.Identity // the identity the mesh dialer makes the endpoint prove
	}
	m := p.metrics.Route(metrics.Outbound, svc.authority, pick.Endpoint.Addr, peer)
	name := svc.Name
	return picked{addr: pick.Endpoint.Addr, service: name, peer: peer, done: func(o outcome) {
		pick.DoneWith(o.served, o.accrualFailure())
		if o.retried {
			return // the client saw nothing of this attempt: detour_retries_total counted it
		}
		m.Observe(o.status, o.grpcStatus, o.failed(), o.took)
		if o.timedOut {
			p.metrics.TimedOut(name)
		}
	}}
}

// pickInbound sends every request to the application at the address the client dialled (see
// appAddr), once the policy lets the client (peer: its identity, "" for plaintext) send it
// (method and path: kubelet probes are let through in plaintext); denied says why not.
func (p *Proxy) pickInbound(dst netip.AddrPort, peer, method, path string) (pk picked, denied string) {
	app := p.appAddr(dst)
	m := p.metrics.Route(metrics.Inbound, dst.String(), app, peer)
	pk = picked{addr: app, peer: peer, done: func(o outcome) { m.Observe(o.status, o.grpcStatus, o.failed(), o.took) }}
	if ok, why := p.cfg.Policy.DecideRequest(dst.Port(), peer, method, path); !ok {
		p.denied(dst.Port(), peer, why)
		return pk, why
	}
	return pk, ""
}

// appAddr is where the application listens for what arrived at dst: dst itself, the pod address
// the client dialled, as if the proxy were not there. So a port the application bound to
// loopback stays private to the pod, as Istio forwards since 1.10. The proxy's own connection to
// dst is not redirected back into it: init's rules let the proxy's UID through first. A port in
// Config.InboundLoopbackPorts is the exception, for applications that listen on loopback only
// and are meant to be reached: it goes to 127.0.0.1 whichever family the client used.
func (p *Proxy) appAddr(dst netip.AddrPort) netip.AddrPort {
	if p.loopbackPorts[dst.Port()] {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port())
	}
	return dst
}

// denied counts a refusal by policy and logs it, at most once a second per port and peer.
func (p *Proxy) denied(port uint16, peer, why string) {
	p.metrics.Denied(metrics.Inbound, port, peer)
	key := fmt.Sprintf("%d %s", port, peer)
	now := time.Now()
	if last, ok := p.denyLog.Load(key); ok && now.Sub(last.(time.Time)) < time.Second {
		return
	}
	p.denyLog.Store(key, now)
	if peer == "" {
		peer = "plaintext"
	}
	p.log.Info("denied by policy", "port", port, "peer", peer, "reason", why)
}

func h2Outcome(r h2.Result) outcome {
	return outcome{status: r.Status, grpcStatus: r.GRPCStatus, err: r.Err, upstream: r.Upstream,
		took: r.Duration, served: endpointLatency(r.Headers, r.Duration, r.Queued),
		reqBytes: r.ReqBytes, respBytes: r.RespBytes, retried: r.Retried, timedOut: r.TimedOut}
}

func h1Outcome(r http1.Result) outcome {
	return outcome{status: r.Status, grpcStatus: -1, err: r.Err, upstream: r.Upstream,
		took: r.Duration, served: endpointLatency(r.Headers, r.Duration, r.Queued),
		reqBytes: r.ReqBytes, respBytes: r.RespBytes, retried: r.Retried, timedOut: r.TimedOut}
}

// The routers below are where each request's route and end are known: they feed the balancer
// and metrics, count the connection's requests per endpoint (HTTP/2), and, only while someone
// taps the proxy, publish the request to the tap.

func (p *Proxy) routeH2Outbound(dst netip.AddrPort, h *h2.Head) (h2.Route, error) {
	pk, svc, err := p.pickOutbound(dst)
	if p.tap.Active() {
		pk = p.tapped(pk, h2TapEvent(metrics.Outbound, dst, h), err)
	}
	if err != nil {
		return h2.Route{}, err
	}
	if info, ok := h.Conn.Owner.(*connInfo); ok {
		info.sentTo(pk.addr)
	}
	done := pk.done // the closure keeps only what it calls
	rt := svc.route(h.Method, h.Path)
	return h2.Route{Addr: pk.addr, Done: func(r h2.Result) { done(h2Outcome(r)) }, Retry: rt, Timeout: rt.timeout}, nil
}

func (p *Proxy) routeH2Inbound(dst netip.AddrPort, h *h2.Head) (h2.Route, error) {
	pk, denied := p.pickInbound(dst, h.Conn.Peer, h.Method, h.Path)
	if p.tap.Active() {
		pk = p.tapped(pk, h2TapEvent(metrics.Inbound, dst, h), nil)
	}
	if info, ok := h.Conn.Owner.(*connInfo); ok {
		info.sentTo(pk.addr)
	}
	done := pk.done
	// A mesh peer is a Detour proxy: it learns from the failure whether the application saw
	// the request (h2.Route.MeshClient), so it can send it to another replica.
	route := h2.Route{Addr: pk.addr, Done: func(r h2.Result) { done(h2Outcome(r)) }, MeshClient: h.Conn.Peer != ""}
	if denied != "" {
		return route, &h2.Refusal{Message: denied} // 403, or gRPC PERMISSION_DENIED
	}
	return route, nil
}

func (p *Proxy) routeH1Outbound(dst netip.AddrPort, r *http.Request) (http1.Route, error) {
	pk, svc, err := p.pickOutbound(dst)
	if p.tap.Active() {
		pk = p.tapped(pk, h1TapEvent(metrics.Outbound, dst, r), err)
	}
	if err != nil {
		return http1.Route{}, err
	}
	done := pk.done
	rt := svc.route(r.Method, r.URL.Path)
	return http1.Route{Addr: pk.addr, Done: func(r http1.Result) { done(h1Outcome(r)) }, Retry: (*h1Retrier)(rt), Timeout: rt.timeout}, nil
}

func (p *Proxy) routeH1Inbound(dst netip.AddrPort, r *http.Request) (http1.Route, error) {
	pk, denied := p.pickInbound(dst, http1.ConnInfoOf(r).Peer, r.Method, r.URL.Path)
	if p.tap.Active() {
		pk = p.tapped(pk, h1TapEvent(metrics.Inbound, dst, r), nil)
	}
	done := pk.done
	// A mesh peer is a Detour proxy: it learns from the failure whether the application saw
	// the request (http1.Route.MeshClient), so it can send it to another replica.
	route := http1.Route{Addr: pk.addr, Done: func(r http1.Result) { done(h1Outcome(r)) }, MeshClient: http1.ConnInfoOf(r).Peer != ""}
	if denied != "" {
		return route, &http1.Refusal{Message: denied}
	}
	return route, nil
}

// tapped fills e with the route and returns pk with a done that also publishes e, or publishes
// e at once when routing failed with err.
func (p *Proxy) tapped(pk picked, e tap.Event, err error) picked {
	e.Service, e.Endpoint, e.Peer = pk.service, pk.addr, pk.peer
	if err != nil {
		e.Error = err.Error()
		p.tap.Publish(e)
		return pk
	}
	done := pk.done
	pk.done = func(o outcome) {
		done(o)
		e.Status, e.GRPCStatus, e.Latency = o.status, o.grpcStatus, o.took
		e.ReqBytes, e.RespBytes = o.reqBytes, o.respBytes
		if o.err != nil {
			e.Error = o.err.Error()
		}
		p.tap.Publish(e)
	}
	return pk
}

func h2TapEvent(direction string, dst netip.AddrPort, h *h2.Head) tap.Event {
	e := tap.Event{Time: time.Now(), Direction: direction, Protocol: protoHTTP2, Authority: h.Authority,
		Method: h.Method, Path: h.Path, Dst: dst, GRPCStatus: -1}
	for _, f := range h.Header {
		if f.Name == "content-type" {
			e.GRPC = isGRPC(f.Value)
			break
		}
	}
	if info, ok := h.Conn.Owner.(*connInfo); ok {
		e.Client = info.client
	}
	return e
}

func h1TapEvent(direction string, dst netip.AddrPort, r *http.Request) tap.Event {
	e := tap.Event{Time: time.Now(), Direction: direction, Protocol: protoHTTP1, Authority: r.Host,
		Method: r.Method, Path: r.URL.Path, Dst: dst, GRPCStatus: -1, GRPC: isGRPC(r.Header.Get("Content-Type"))}
	e.Client, _ = netip.ParseAddrPort(r.RemoteAddr)
	return e
}

// isGRPC reports whether a content-type is gRPC's (application/grpc, +proto, +json, ...).
func isGRPC(contentType string) bool {
	rest, ok := strings.CutPrefix(contentType, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// localAddrs caches the pod's own addresses for the inbound open-relay check. A miss
// refreshes it, at most once a second, so an address added later is still found.
type localAddrs struct {
	mu      sync.Mutex
	addrs   map[netip.Addr]bool
	fetched time.Time
}

func (l *localAddrs) has(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.addrs[a] {
		return true
	}
	if time.Since(l.fetched) < time.Second {
		return false
	}
	l.fetched = time.Now()
	l.addrs = map[netip.Addr]bool{}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range ifaddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				l.addrs[ip.Unmap()] = true
			}
		}
	}
	return l.addrs[a]
}
