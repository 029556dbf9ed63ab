package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"time"
)

// TEMPORARY until proxy/detect and proxy/relay land.

type peekedConn struct {
	net.Conn
	r io.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (p *Proxy) sniff(direction string, dst netip.AddrPort, c *net.TCPConn) (string, net.Conn) {
	buf := make([]byte, 24)
	c.SetReadDeadline(time.Now().Add(p.cfg.DetectTimeout))
	n, _ := io.ReadFull(c, buf)
	c.SetReadDeadline(time.Time{})
	buf = buf[:n]
	conn := &peekedConn{c, io.MultiReader(bytes.NewReader(buf), c)}
	if bytes.Equal(buf, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) {
		p.metrics.Detected(direction, dst.Port(), protoHTTP2)
		return protoHTTP2, conn
	}
	p.metrics.Detected(direction, dst.Port(), protoOpaque)
	return protoOpaque, conn
}

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
	go func() { <-ctx.Done(); c.Close() }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	<-done
}
