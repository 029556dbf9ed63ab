package detect

import (
	"errors"
	"fmt"
	"slices"
)

// ClientHello is what the proxy needs from a TLS ClientHello before deciding to terminate it:
// the server name and the application protocols offered. Mesh TLS is recognised by its ALPN
// (Detour's proxies offer "detour/h2"); anything else is the application's own TLS and is relayed
// untouched.
type ClientHello struct {
	// ServerName is the server_name (SNI) host name, as sent; empty if absent.
	ServerName string
	// ALPN lists the application_layer_protocol_negotiation protocols in the client's order;
	// nil if the extension is absent.
	ALPN []string
}

// OffersALPN reports whether the client offered protocol proto.
func (h *ClientHello) OffersALPN(proto string) bool { return slices.Contains(h.ALPN, proto) }

// ErrIncomplete is returned by ParseClientHello when the bytes end before the ClientHello
// does: reading more may complete it.
var ErrIncomplete = errors.New("tls: incomplete ClientHello")

// maxClientHello bounds the ClientHello ParseClientHello reassembles. Post-quantum key shares
// make real ones 1-2 KiB; 64 KiB leaves room for anything legitimate.
const maxClientHello = 1 << 16

const (
	extServerName = 0  // RFC 6066 §3
	extALPN       = 16 // RFC 7301 §3.1
)

// ParseClientHello parses the ClientHello at the start of b, which holds TLS records as read
// from the connection (record headers included). A ClientHello fragmented over several
// handshake records is reassembled. It returns ErrIncomplete if b ends first, and another
// error if the bytes are not a well-formed ClientHello.
func ParseClientHello(b []byte) (*ClientHello, error) {
	msg, err := handshakeMessage(b)
	if err != nil {
		return nil, err
	}
	if msg[0] != handshakeClientHello {
		return nil, fmt.Errorf("tls: handshake message type %d is not a ClientHello", msg[0])
	}
	return parseClientHelloBody(msg[4:])
}

// handshakeMessage returns the first handshake message (with its 4-byte header), joining
// record fragments. It copies only when the message spans records.
func handshakeMessage(b []byte) ([]byte, error) {
	var joined []byte
	var first []byte // the only fragment, while there is one
	for {
		if len(b) < recordHeaderLen {
			return nil, ErrIncomplete
		}
		if b[0] != recordTypeHandshake {
			return nil, fmt.Errorf("tls: record type %d in a ClientHello, want handshake (22)", b[0])
		}
		if b[1] != 3 || b[2] > 4 {
			return nil, fmt.Errorf("tls: record version %d.%d", b[1], b[2])
		}
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > maxPlaintext {
			// RFC 8446 §5.1: no zero-length handshake fragments; plaintext is at most 2^14.
			return nil, fmt.Errorf("tls: record length %d", n)
		}
		if len(b) < recordHeaderLen+n {
			return nil, ErrIncomplete
		}
		frag := b[recordHeaderLen : recordHeaderLen+n]
		b = b[recordHeaderLen+n:]
		switch {
		case first == nil && joined == nil:
			first = frag
		case joined == nil:
			joined = append(append(make([]byte, 0, len(first)+len(frag)), first...), frag...)
			first = nil
		default:
			joined = append(joined, frag...)
		}
		msg := first
		if joined != nil {
			msg = joined
		}
		if len(msg) >= 4 {
			l := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if l > maxClientHello {
				return nil, fmt.Errorf("tls: ClientHello of %d bytes is larger than %d", l, maxClientHello)
			}
			if len(msg) >= 4+l {
				return msg[:4+l], nil
			}
		}
		if len(msg) > 4+maxClientHello {
			return nil, fmt.Errorf("tls: ClientHello larger than %d bytes", maxClientHello)
		}
	}
}

// parseClientHelloBody parses RFC 8446 §4.1.2 (the same layout as TLS 1.2, RFC 5246 §7.4.1.2).
func parseClientHelloBody(b []byte) (*ClientHello, error) {
	r := reader(b)
	if !r.skip(2 + 32) { // legacy_version, random
		return nil, errMalformed("version and random")
	}
	if _, ok := r.vec8(); !ok { // legacy_session_id
		return nil, errMalformed("session id")
	}
	suites, ok := r.vec16()
	if !ok || len(suites) < 2 || len(suites)%2 != 0 {
		return nil, errMalformed("cipher suites")
	}
	if comp, ok := r.vec8(); !ok || len(comp) < 1 {
		return nil, errMalformed("compression methods")
	}
	h := &ClientHello{}
	if len(r) == 0 {
		return h, nil // no extensions (TLS 1.2 and older)
	}
	exts, ok := r.vec16()
	if !ok || len(r) != 0 {
		return nil, errMalformed("extensions")
	}
	var seenSNI, seenALPN bool
	for len(exts) > 0 {
		typ, ok1 := exts.u16()
		data, ok2 := exts.vec16()
		if !ok1 || !ok2 {
			return nil, errMalformed("extension")
		}
		switch typ {
		case extServerName:
			if seenSNI {
				return nil, errMalformed("repeated server_name extension")
			}
			seenSNI = true
			name, err := parseSNI(data)
			if err != nil {
				return nil, err
			}
			h.ServerName = name
		case extALPN:
			if seenALPN {
				return nil, errMalformed("repeated ALPN extension")
			}
			seenALPN = true
			alpn, err := parseALPN(data)
			if err != nil {
				return nil, err
			}
			h.ALPN = alpn
		}
	}
	return h, nil
}

// parseSNI reads a ServerNameList and returns its host_name (RFC 6066 §3).
func parseSNI(data reader) (string, error) {
	list, ok := data.vec16()
	if !ok || len(data) != 0 || len(list) == 0 {
		return "", errMalformed("server_name list")
	}
	name := ""
	for len(list) > 0 {
		typ, ok1 := list.u8()
		host, ok2 := list.vec16()
		if !ok1 || !ok2 {
			return "", errMalformed("server_name entry")
		}
		if typ != 0 {
			continue // not host_name; none other is defined
		}
		if name != "" || len(host) == 0 {
			return "", errMalformed("server_name host_name")
		}
		for _, c := range host {
			if c <= ' ' || c >= 0x7f {
				return "", errMalformed("server_name host_name is not printable ASCII")
			}
		}
		name = string(host)
	}
	return name, nil
}

// parseALPN reads a ProtocolNameList (RFC 7301 §3.1).
func parseALPN(data reader) ([]string, error) {
	list, ok := data.vec16()
	if !ok || len(data) != 0 || len(list) == 0 {
		return nil, errMalformed("ALPN protocol list")
	}
	var out []string
	for len(list) > 0 {
		p, ok := list.vec8()
		if !ok || len(p) == 0 {
			return nil, errMalformed("ALPN protocol name")
		}
		out = append(out, protoName(p))
	}
	return out, nil
}

// protoName returns common ALPN names without allocating a new string for each.
func protoName(p []byte) string {
	switch string(p) {
	case "h2":
		return "h2"
	case "http/1.1":
		return "http/1.1"
	case "detour/h2":
		return "detour/h2"
	}
	return string(p)
}

func errMalformed(what string) error { return fmt.Errorf("tls: malformed ClientHello: %s", what) }

// reader consumes big-endian TLS vectors from the front of a byte slice.
type reader []byte

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *reader) u8() (byte, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return v, true
}

func (r *reader) u16() (int, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := int((*r)[0])<<8 | int((*r)[1])
	*r = (*r)[2:]
	return v, true
}

func (r *reader) vec8() (reader, bool) {
	n, ok := r.u8()
	if !ok || len(*r) < int(n) {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}

func (r *reader) vec16() (reader, bool) {
	n, ok := r.u16()
	if !ok || len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}
