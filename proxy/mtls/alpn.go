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
	// ALPNTCP carries one opaque TCP connection (also HTTP/1), relayed byte for byte.
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
