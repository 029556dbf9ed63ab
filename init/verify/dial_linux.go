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
	// setfsuid(2) reports no error when it refuses (without CAP_SETUID, as in an init container
	// given NET_ADMIN and NET_RAW only); an invalid UID makes it return the fsuid in force.
	if cur, _ := unix.SetfsuidRetUid(-1); cur != uid {
		return nil, errNoSetuid
	}
	return d.Dial(network, dst.String())
}
