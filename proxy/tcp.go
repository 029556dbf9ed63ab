package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/proxy/balance"
	"github.com/detourmesh/detour/proxy/detect"
	"github.com/detourmesh/detour/proxy/metrics"
	"github.com/detourmesh/detour/proxy/mtls"
	"github.com/detourmesh/detour/proxy/rawsock"
	"github.com/detourmesh/detour/proxy/relay"
)

// sniffMax bounds the bytes read to detect a protocol: room for a large TLS ClientHello.
const sniffMax = 16 << 10

// sniff detects the protocol from the client's first bytes. Each result, timeouts included,
// is counted per port; the first timeout on a port is logged, so a user sees why a
// connection waited (and which port to declare opaque).
func (p *Proxy) sniff(direction string, dst netip.AddrPort, c *net.TCPConn) (string, net.Conn) {
	res, conn, err := detect.Sniff(c, p.cfg.DetectTimeout, sniffMax)
	if err != nil {
		p.metrics.Detected(direction, dst.Port(), "error")
		return protoOpaque, conn
	}
	if res.TimedOut {
		p.metrics.Detected(direction, dst.Port(), "timeout")
		if _, seen := p.loggedTimeout.LoadOrStore(dst.Port(), true); !seen {
			p.log.Warn("protocol detection timed out: the client sent nothing; relaying as TCP. "+
				"If the server speaks first on this port, add it to --opaque-ports to skip the wait",
				"direction", direction, "port", dst.Port(), "timeout", p.cfg.DetectTimeout)
		}
		return protoOpaque, conn
	}
	proto := res.Protocol.String()
	if res.Protocol == detect.TLS && direction == metrics.Inbound && mtls.IsMesh(res.Hello) {
		proto = protoMesh
	}
	p.metrics.Detected(direction, dst.Port(), proto)
	return proto, conn
}

// meshHandshakeTimeout bounds the TLS handshake of a connection from another proxy.
const meshHandshakeTimeout = 10 * time.Second

// serveMesh terminates mutual TLS from another proxy, checks its certificate chains to the trust
// anchors, and serves what it carries, by its ALPN, as if it had arrived in plaintext from that
// identity.
func (p *Proxy) serveMesh(ctx context.Context, c net.Conn, client, dst netip.AddrPort, info *connInfo) {
	if p.serverTLS == nil {
		p.metrics.Detected(metrics.Inbound, dst.Port(), "mesh-tls-refused")
		p.log.Warn("refused mesh TLS: this proxy has no workload identity", "client", client, "dst", dst)
		return
	}
	tc := tls.Server(rawsock.Wrap(c), p.serverTLS) // raw socket I/O beneath TLS, see proxy/rawsock
	hctx, cancel := context.WithTimeout(ctx, meshHandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	var id spiffeid.ID
	if err == nil {
		id, err = mtls.PeerID(tc.ConnectionState())
	}
	if err != nil {
		p.metrics.Detected(metrics.Inbound, dst.Port(), "mesh-tls-refused")
		p.log.Warn("refused mesh TLS", "client", client, "dst", dst, "err", err)
		return
	}
	// The outbound proxy already told the protocols apart; its ALPN says which it found.
	proto := protoOpaque // mtls.ALPNTCP
	switch tc.ConnectionState().NegotiatedProtocol {
	case mtls.ALPNH2:
		proto = protoHTTP2
	case mtls.ALPNHTTP1:
		proto = protoHTTP1
	}
	info.setPeer(id.String())
	info.setProtocol(proto)
	p.serve(ctx, metrics.Inbound, proto, nil, tc, dst, id.String(), info)
}

// relayTCP relays a connection byte for byte: to its original destination, to an endpoint of
// its service picked per connection (over mesh TLS when it is meshed), or, inbound, to the
// application (appAddr) once the policy lets peer ("" for plaintext) reach the port.
func (p *Proxy) relayTCP(ctx context.Context, direction string, svc *service, dst netip.AddrPort, c net.Conn, peer string) {
	target := dst
	dial := p.dialMesh
	if direction == metrics.Inbound {
		if ok, why := p.cfg.Policy.DecideString(dst.Port(), peer); !ok {
			p.denied(dst.Port(), peer, why)
			return
		}
		target = p.appAddr(dst)
		dial = func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
			return p.dialer.DialContext(ctx, "tcp", a.String())
		}
	}
	var pick *balance.Pick
	if svc != nil {
		if svc.balancer == nil {
			p.log.Warn("no endpoint for connection: the service's endpoints are not known", "service", svc.Name, "dst", dst)
			return
		}
		pk, err := svc.balancer.Pick()
		if err != nil {
			p.log.Warn("no endpoint for connection", "service", svc.Name, "dst", dst, "err", err)
			return
		}
		pick, target = &pk, pk.Endpoint.Addr
	}
	start := time.Now()
	up, err := dial(ctx, target)
	if pick != nil {
		pick.Done(err, time.Since(start)) // a connection's cost to the balancer is its connect time
		// A connection that could not be made reached no application: mark the endpoint down
		// for every pick and try the others.
		for tries := 1; err != nil && tries < min(len(svc.Endpoints), 3) && ctx.Err() == nil; tries++ {
			svc.balancer.Eject(target)
			pk, perr := svc.balancer.PickOther(target)
			if perr != nil || pk.Endpoint.Addr == target {
				break
			}
			p.metrics.Retried(svc.Name, target, "dial_failed")
			target, start = pk.Endpoint.Addr, time.Now()
			up, err = dial(ctx, target)
			pk.Done(err, time.Since(start))
		}
		if err != nil {
			svc.balancer.Eject(target)
		}
	}
	if err != nil {
		p.log.Debug("relay dial failed", "direction", direction, "target", target, "err", err)
		return
	}
	fromClient, fromServer, err := relay.RelayContext(ctx, c, up)
	p.metrics.Bytes(direction, fromClient, fromServer)
	if err != nil {
		p.log.Debug("relay ended", "direction", direction, "target", target, "err", err)
	}
}
