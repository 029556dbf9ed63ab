package check

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
)

// socket is a listening TCP socket of /proc/net/tcp or tcp6.
type socket struct {
	addr  netip.AddrPort
	inode uint64
	proxy bool // held by the proxy
}

// parseListeners reads the sockets in state LISTEN (0A) from the kernel's /proc/net/tcp or
// tcp6 table: "sl local_address rem_address st ... inode", each address a run of 32-bit words
// printed as the host reads them from memory (so their bytes come out in host order), the port
// a plain number.
func parseListeners(table string) []socket {
	var out []socket
	for line := range strings.Lines(table) {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" {
			continue
		}
		host, port, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if len(host) != 8 && len(host) != 32 {
			continue
		}
		raw := make([]byte, len(host)/2)
		bad := false
		for i := 0; i < len(host); i += 8 {
			w, err := strconv.ParseUint(host[i:i+8], 16, 32)
			bad = bad || err != nil
			binary.NativeEndian.PutUint32(raw[i/2:], uint32(w))
		}
		if bad {
			continue
		}
		a, _ := netip.AddrFromSlice(raw)
		p, err := strconv.ParseUint(port, 16, 16)
		if err != nil {
			continue
		}
		ino, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			continue
		}
		out = append(out, socket{addr: netip.AddrPortFrom(a.Unmap(), uint16(p)), inode: ino})
	}
	return out
}
