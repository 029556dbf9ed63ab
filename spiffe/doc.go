// Package spiffe holds the mesh's rules for workload identities on the wire: the one verifier of
// a peer's X509-SVID chain, and the trust anchors and controller identity it checks against.
//
// It exists so that security logic exists once. Proxies checking each other (proxy/mtls), the
// proxy checking the controller (ClientTLS) and the controller checking its callers
// (controller/identity) all call VerifyPeer; two near-copies with different rules would drift,
// and the weaker one is the one an attacker finds.
package spiffe
