// Package origdst recovers the address a client dialled before iptables REDIRECT sent its
// connection to the proxy: the proxy routes by it, and the init proof checks it.
package origdst

import (
	"errors"
	"net"
	"net/netip"
)

// ErrUnsupported is returned where the platform has no original-destination lookup.
var ErrUnsupported = errors.New("original destination lookup is supported on Linux only")

// Lookup returns the original destination of a connection accepted by a listener that
// iptables redirected to (SO_ORIGINAL_DST for IPv4, IP6T_SO_ORIGINAL_DST for IPv6). For a
// connection that no NAT rule touched it returns the connection's own local address.
func Lookup(c *net.TCPConn) (netip.AddrPort, error) {
	return lookup(c)
}
