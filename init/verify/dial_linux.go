package verify

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// dial connects to dst from the calling thread. With uid >= 0 the socket is created with that
// file-system UID, which is what the iptables owner match sees, so the connection counts as
// the proxy's without starting a process.
func dial(network string, dst netip.AddrPort, uid int) (net.Conn, error) {
	d := net.Dialer{Timeout: Timeout}
	if uid < 0 {
		return d.Dial(network, dst.String())
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Setfsuid(uid); err != nil {
		return nil, fmt.Errorf("taking UID %d: %w", uid, err)
	}
	defer unix.Setfsuid(os.Geteuid())
	return d.Dial(network, dst.String())
}
