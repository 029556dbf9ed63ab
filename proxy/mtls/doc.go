// Package mtls is the mutual TLS between meshed proxies: it exists so that a proxy only talks to
// the workload discovery announced, and an inbound proxy knows which workload is calling, by
// SPIFFE identities rather than by addresses that any pod can take.
//
// Both sides present the X.509 SVID of their identity.Source and verify the peer's themselves
// (crypto/tls's own verification checks host names, and a SPIFFE ID is a URI SAN): the chain must
// lead to the Source's trust anchors, carry the right extended key usage, and name exactly one
// SPIFFE ID in the Source's trust domain, which for a server must be the identity discovery
// announced for the endpoint. Only TLS 1.3 is spoken. Certificates are read from the Source on
// every handshake, so a renewal applies to the next connection and established ones keep going.
//
// Mesh TLS is told apart from the application's own TLS by ALPN: a proxy offers "detour/h2"
// (HTTP/2 between proxies) or "detour/tcp" (anything else, relayed), and IsMesh recognises a
// ClientHello that offers one of them; all other TLS passes through untouched.
//
// Policy decides, per inbound port, whether plaintext clients are accepted (Permissive) or not
// (Strict), and which peer identities may call.
package mtls
