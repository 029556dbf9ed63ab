package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"
	"time"

	"github.com/detourmesh/detour/spiffe"
)

// BenchmarkHandshake measures one full mutual-TLS handshake over loopback TCP, both sides
// verifying the other's SVID chain (leaf + issuer to a trust anchor), with TCP connect and close:
// what a new upstream connection between two proxies costs. The client waits for the server's
// first byte, so the server's verification of the client is inside the measurement.
func BenchmarkHandshake(b *testing.B) {
	p := newPKI(b)
	scfg := ServerConfig(p.server, []string{ALPNH2, ALPNTCP})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				sc := tls.Server(c, scfg)
				if sc.Handshake() == nil {
					sc.Write([]byte{1})
					io.Copy(io.Discard, sc)
				}
			}()
		}
	}()
	ccfg := ClientConfig(p.client, idStockdata, ALPNH2)
	addr := ln.Addr().String()
	b.ReportAllocs()
	for b.Loop() {
		c, err := tls.Dial("tcp", addr, ccfg)
		if err != nil {
			b.Fatal(err)
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkVerifyPeer measures the verification this package adds to each handshake: chain
// limits, SVID checks and the chain to the trust anchor.
func BenchmarkVerifyPeer(b *testing.B) {
	p := newPKI(b)
	cert, _ := p.client.Certificate()
	chain := make([]*x509.Certificate, len(cert.Certificate))
	for i, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			b.Fatal(err)
		}
		chain[i] = c
	}
	td := idStockweb.TrustDomain()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := spiffe.VerifyPeer(chain, p.root.Roots, x509.ExtKeyUsageClientAuth, td, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
