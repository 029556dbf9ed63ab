// Package detect tells, from the first bytes a client sends, which protocol a redirected
// connection speaks: HTTP/2 with prior knowledge, HTTP/1.x, TLS, or anything else (opaque).
//
// It exists because the proxy sees only a TCP connection to an address: the application never
// tells it the protocol, and the choice decides everything after it — HTTP traffic is balanced
// per request, mesh TLS is terminated, everything else is relayed byte for byte. Detection must
// never change the bytes: Sniff hands back a connection that replays what it read, and exposes
// those bytes and the raw socket so the relay can still splice(2) in the kernel.
//
// Classify and ParseClientHello are pure functions over a byte prefix, fuzzed, so that a
// hostile or broken client can at worst be classified as opaque.
package detect

import "bytes"

// Protocol is what a connection's first bytes say it speaks.
type Protocol uint8

// Protocols Classify recognises. The zero value is Opaque.
const (
	// Opaque is anything not recognised: relayed as bytes.
	Opaque Protocol = iota
	// HTTP1 is an HTTP/1.0 or HTTP/1.1 request line (RFC 9112 §3).
	HTTP1
	// HTTP2 is the HTTP/2 connection preface of a client with prior knowledge (RFC 9113 §3.4).
	HTTP2
	// TLS is a TLS handshake record carrying a ClientHello (RFC 8446 §5.1, §4.1.2).
	TLS
)

var protocolNames = [...]string{Opaque: "opaque", HTTP1: "http1", HTTP2: "http2", TLS: "tls"}

// String returns the protocol's name as metrics and logs use it: opaque, http1, http2, tls.
func (p Protocol) String() string {
	if int(p) < len(protocolNames) {
		return protocolNames[p]
	}
	return "unknown"
}

// h2Preface is the client connection preface (RFC 9113 §3.4).
var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// maxMethod bounds an HTTP method token. Registered methods are at most 17 bytes
// (UPDATEREDIRECTREF); a longer token is not HTTP, and saying so early spares a client-first
// text protocol from waiting for the sniff timeout.
const maxMethod = 32

// Classify says which protocol prefix, the first bytes of a connection, begins. final is false
// when more bytes could change the answer; the protocol is then Opaque. It needs at most 24 bytes
// for HTTP/2, 6 for TLS, and the request line up to "HTTP/1.x" for HTTP/1.
func Classify(prefix []byte) (p Protocol, final bool) {
	if len(prefix) == 0 {
		return Opaque, false
	}
	if prefix[0] == recordTypeHandshake {
		return classifyTLS(prefix)
	}
	n := min(len(prefix), len(h2Preface))
	if bytes.Equal(prefix[:n], h2Preface[:n]) {
		if n == len(h2Preface) {
			return HTTP2, true
		}
		return Opaque, false
	}
	return classifyHTTP1(prefix)
}

const (
	recordTypeHandshake  = 0x16
	handshakeClientHello = 0x01
	recordHeaderLen      = 5
	maxPlaintext         = 1 << 14 // RFC 8446 §5.1: TLSPlaintext.length
)

// classifyTLS checks the record header (type 22, version 3.x, a plausible length) and the
// handshake type of the first message (ClientHello).
func classifyTLS(b []byte) (Protocol, bool) {
	if len(b) > 1 && b[1] != 3 {
		return Opaque, true
	}
	// Record versions 3.0 (SSL 3) to 3.4; ClientHellos use 3.1 or 3.3 in practice.
	if len(b) > 2 && b[2] > 4 {
		return Opaque, true
	}
	if len(b) > 4 {
		if l := int(b[3])<<8 | int(b[4]); l == 0 || l > maxPlaintext {
			return Opaque, true
		}
	}
	if len(b) > 5 {
		if b[5] != handshakeClientHello {
			return Opaque, true
		}
		return TLS, true
	}
	return Opaque, false
}

// classifyHTTP1 matches a request line, method SP request-target SP "HTTP/1." DIGIT
// (RFC 9112 §3), after any empty lines a client may send first (RFC 9112 §2.2).
func classifyHTTP1(b []byte) (Protocol, bool) {
	i := 0
	for i < len(b) && (b[i] == '\r' || b[i] == '\n') {
		i++
	}
	// method = token, but in the form every registered and every method in use has: upper-case
	// letters, digits, '-' and '_' (RFC 9110 §9.1 methods are case-sensitive). A text protocol
	// whose first word is lower-case ("ping", "get key") is then opaque from its first byte, not
	// after the sniff timeout; a request with a lower-case method is relayed untouched.
	start := i
	for i < len(b) && isMethodChar(b[i], i == start) {
		i++
		if i-start > maxMethod {
			return Opaque, true
		}
	}
	if i == len(b) {
		return Opaque, false
	}
	if i == start || b[i] != ' ' {
		return Opaque, true
	}
	i++
	// request-target: any visible bytes; servers accept raw UTF-8 in paths, so do we.
	start = i
	for i < len(b) && b[i] > ' ' && b[i] != 0x7f {
		i++
	}
	if i == len(b) {
		return Opaque, false
	}
	if i == start || b[i] != ' ' {
		return Opaque, true
	}
	i++
	const version = "HTTP/1."
	for k := 0; k < len(version); k, i = k+1, i+1 {
		if i == len(b) {
			return Opaque, false
		}
		if b[i] != version[k] {
			return Opaque, true
		}
	}
	if i == len(b) {
		return Opaque, false
	}
	if b[i] < '0' || b[i] > '9' {
		return Opaque, true
	}
	return HTTP1, true
}

// isMethodChar reports whether c may appear in a method as classifyHTTP1 accepts them: an
// upper-case letter first, then upper-case letters, digits, '-' or '_'.
func isMethodChar(c byte, first bool) bool {
	switch {
	case 'A' <= c && c <= 'Z':
		return true
	case first:
		return false
	}
	return '0' <= c && c <= '9' || c == '-' || c == '_'
}
