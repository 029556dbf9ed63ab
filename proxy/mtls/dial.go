package mtls

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/proxy/identity"
	"github.com/detourmesh/detour/proxy/rawsock"
)

// Dialer returns a dial function for the forwarding engines (it converts to h2.Dialer and
// http1.Dialer). lookup says whether the endpoint at addr is meshed and with which identity
// (discovery's Endpoint.Identity); it is called on every dial and must not block. An endpoint
// that is not meshed gets plain TCP. A meshed one gets mutual TLS with ClientConfig(src, id,
// alpn), handshake completed and ALPN checked before the connection is returned.
//
// In TLS 1.3 the client finishes its handshake before the server has checked the client's
// certificate, so a server refusing this proxy shows as an error on the first read, not here.
func Dialer(src identity.Source, lookup func(addr netip.AddrPort) (spiffeid.ID, bool), alpn string) func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		want, meshed := lookup(addr)
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil || !meshed {
			return c, err
		}
		// TLS reads and writes the socket raw (proxy/rawsock), as the engines do plain TCP.
		tc := tls.Client(rawsock.Wrap(c), ClientConfig(src, want, alpn))
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("mTLS handshake with %s (%s): %w", addr, want, err)
		}
		// ClientConfig refuses another protocol already; this guards the contract the engines
		// rely on (h2.Dialer: "negotiated HTTP/2") against a config change.
		if p := tc.ConnectionState().NegotiatedProtocol; p != alpn {
			tc.Close()
			return nil, fmt.Errorf("mTLS handshake with %s (%s): negotiated ALPN %q, want %q", addr, want, p, alpn)
		}
		return tc, nil
	}
}
