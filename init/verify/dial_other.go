//go:build !linux

package verify

import (
	"errors"
	"net"
	"net/netip"
)

func dial(network string, dst netip.AddrPort, uid int) (net.Conn, error) {
	if uid >= 0 {
		return nil, errors.New("dialling as another UID is supported on Linux only")
	}
	var d net.Dialer
	d.Timeout = Timeout
	return d.Dial(network, dst.String())
}
