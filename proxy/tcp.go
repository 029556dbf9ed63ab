package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/detourmesh/detour/proxy/balance"
	"github.com/detourmesh/detour/proxy/detect"
	"github.com/detourmesh/detour/proxy/metrics"
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
	p.metrics.Detected(direction, dst.Port(), proto)
	return proto, conn
}

// relayTCP relays a connection byte for byte: to its original destination, to an endpoint of
// its service picked per connection, or, inbound, to the application on loopback.
func (p *Proxy) relayTCP(ctx context.Context, direction string, svc *service, dst netip.AddrPort, c net.Conn) {
	target := dst
	if direction == metrics.Inbound {
		target = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port())
	}
	var pick *balance.Pick
	if svc != nil {
		pk, err := svc.balancer.Pick()
		if err != nil {
			p.log.Warn("no endpoint for connection", "service", svc.Name, "dst", dst, "err", err)
			return
		}
		pick, target = &pk, pk.Endpoint.Addr
	}
	start := time.Now()
	up, err := p.dialer.DialContext(ctx, "tcp", target.String())
	if pick != nil {
		pick.Done(err, time.Since(start)) // a connection's cost to the balancer is its connect time
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
