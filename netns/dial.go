package netns

import (
	"context"
	"net"
)

// DialContext connects from inside n. The socket belongs to n for its whole life, so the
// connection can be used from any goroutine afterwards. It has the shape of
// net.Dialer.DialContext, for clients that open connections on goroutines of their own (an
// http.Transport, a gRPC ClientConn).
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
