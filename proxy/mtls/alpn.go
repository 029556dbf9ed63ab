package mtls

import (
	"strings"

	"github.com/detourmesh/detour/proxy/detect"
)

// The ALPN protocols proxies speak to each other (RFC 7301). The "detour/" prefix is what makes
// a ClientHello mesh TLS.
const (
	// ALPNH2 carries HTTP/2 (gRPC) streams, balanced per request by the outbound proxy.
	ALPNH2 = "detour/h2"
	// ALPNHTTP1 carries HTTP/1.1 requests, served one by one by the inbound proxy.
	ALPNHTTP1 = "detour/http1"
	// ALPNTCP carries one opaque TCP connection, relayed byte for byte. The outbound proxy has
	// already told these three apart, so the inbound proxy does not detect again (no waiting).
	ALPNTCP = "detour/tcp"

	alpnPrefix = "detour/"
)

// IsMesh reports whether a ClientHello comes from a Detour proxy: it offers a "detour/" ALPN
// protocol. Any other TLS is the application's own and must be relayed untouched.
func IsMesh(hello *detect.ClientHello) bool {
	if hello == nil {
		return false
	}
	for _, p := range hello.ALPN {
		if strings.HasPrefix(p, alpnPrefix) {
			return true
		}
	}
	return false
}
