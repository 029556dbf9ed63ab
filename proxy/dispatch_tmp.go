package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"

	"github.com/detourmesh/detour/proxy/detect"
)

// sniffMax bounds the bytes read to detect a protocol: room for a large TLS ClientHello.
const sniffMax = 8 << 10

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

// TEMPORARY until proxy/relay lands.
func (p *Proxy) relay(ctx context.Context, direction string, svc *service, dst netip.AddrPort, c net.Conn) {
	target := dst
	if direction == "inbound" {
		target = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port())
	}
	if svc != nil {
		pick, err := svc.balancer.Pick()
		if err != nil {
			return
		}
		defer pick.Done(nil, 0)
		target = pick.Endpoint.Addr
	}
	up, err := p.dialer.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	<-done
}
