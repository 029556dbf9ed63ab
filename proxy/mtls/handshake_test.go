package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/detourmesh/detour/internal/testpki"
	"github.com/detourmesh/detour/spiffe"
)

// outcome is what both ends of one handshake saw.
type outcome struct {
	clientErr, serverErr error // handshake, or (client) the first read, which carries a refusal
	client, server       tls.ConnectionState
}

// handshake runs one TLS handshake over loopback TCP between a client and a server config. In
// TLS 1.3 the client completes before the server has judged the client's certificate, so the
// client then reads the server's first byte: a refusal arrives there as an alert.
func handshake(t testing.TB, ccfg, scfg *tls.Config) outcome {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out outcome
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			out.serverErr = err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		sc := tls.Server(c, scfg)
		if out.serverErr = sc.HandshakeContext(ctx); out.serverErr == nil {
			out.server = sc.ConnectionState()
			_, out.serverErr = sc.Write([]byte{'k'})
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	cc := tls.Client(c, ccfg)
	if out.clientErr = cc.HandshakeContext(ctx); out.clientErr == nil {
		out.client = cc.ConnectionState()
		var b [1]byte
		if _, err := io.ReadFull(cc, b[:]); err != nil {
			out.clientErr = err
		}
	}
	if out.clientErr != nil {
		c.Close() // a client that refused the server has sent its alert; unblock the server
	}
	<-done
	return out
}

func TestClientAcceptsTheAnnouncedServer(t *testing.T) {
	p := newPKI(t)
	out := handshake(t, ClientConfig(p.client, idStockdata, ALPNH2), ServerConfig(p.server, []string{ALPNH2, ALPNTCP}))
	if out.clientErr != nil || out.serverErr != nil {
		t.Fatalf("handshake failed: client %v, server %v", out.clientErr, out.serverErr)
	}
	if out.client.Version != tls.VersionTLS13 || out.client.NegotiatedProtocol != ALPNH2 {
		t.Errorf("version %x ALPN %q, want TLS 1.3 and %q", out.client.Version, out.client.NegotiatedProtocol, ALPNH2)
	}
	if id, err := PeerID(out.client); err != nil || id != idStockdata {
		t.Errorf("client's PeerID = %v, %v; want %v", id, err, idStockdata)
	}
	if id, err := PeerID(out.server); err != nil || id != idStockweb {
		t.Errorf("server's PeerID = %v, %v; want %v", id, err, idStockweb)
	}
}

func TestALPNNegotiation(t *testing.T) {
	p := newPKI(t)
	both := []string{ALPNH2, ALPNTCP}
	cases := []struct {
		name     string
		offer    string
		accept   []string
		want     string // "" : refused
		refusing string // which side refuses
	}{
		{"detour/h2 is chosen when offered", ALPNH2, both, ALPNH2, ""},
		{"detour/tcp is chosen when offered", ALPNTCP, both, ALPNTCP, ""},
		{"a server without the offered protocol refuses", ALPNTCP, []string{ALPNH2}, "", "server"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := handshake(t, ClientConfig(p.client, idStockdata, tc.offer), ServerConfig(p.server, tc.accept))
			if tc.want != "" {
				if out.clientErr != nil || out.serverErr != nil {
					t.Fatalf("handshake failed: client %v, server %v", out.clientErr, out.serverErr)
				}
				if out.client.NegotiatedProtocol != tc.want || out.server.NegotiatedProtocol != tc.want {
					t.Errorf("negotiated %q/%q, want %q", out.client.NegotiatedProtocol, out.server.NegotiatedProtocol, tc.want)
				}
				return
			}
			if out.serverErr == nil || out.clientErr == nil {
				t.Fatalf("handshake succeeded: client %v, server %v", out.clientErr, out.serverErr)
			}
		})
	}
}

func TestClientRefusesServers(t *testing.T) {
	p := newPKI(t)
	untrusted := newRoot(t, "someone else's anchor").Issuer("someone else's issuer")
	long := p.root.Issuer("i1").Issuer("i2").Issuer("i3").Issuer("i4")
	cases := []struct {
		name string
		cert func() *tls.Certificate // what the server presents
		want string                  // in the client's error
	}{
		{"another identity", func() *tls.Certificate { return p.ca.Leaf(testpki.LeafSpec{ID: idOther, EKU: ekuBoth}) },
			"server presented spiffe://cluster.local/ns/x/sa/y, discovery announced spiffe://cluster.local/ns/stocks/sa/stockdata"},
		{"the right identity only as a DNS SAN", func() *tls.Certificate {
			return p.ca.Leaf(testpki.LeafSpec{DNS: []string{"spiffe.cluster.local", "stockdata.stocks.svc"}, EKU: ekuBoth})
		}, "no SPIFFE ID"},
		{"a certificate without extended key usage", func() *tls.Certificate { return p.ca.Leaf(testpki.LeafSpec{ID: idStockdata}) },
			"lacks extended key usage serverAuth"},
		{"a client-only certificate", func() *tls.Certificate { return p.ca.Leaf(testpki.LeafSpec{ID: idStockdata, EKU: ekuClient}) },
			"lacks extended key usage serverAuth"},
		{"a foreign trust domain", func() *tls.Certificate { return p.ca.Leaf(testpki.LeafSpec{ID: idForeign, EKU: ekuBoth}) },
			`is in trust domain "evil.example", not "cluster.local"`},
		{"an expired certificate", func() *tls.Certificate {
			return p.ca.Leaf(testpki.LeafSpec{ID: idStockdata, EKU: ekuBoth, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
		}, "expired"},
		{"a certificate not yet valid", func() *tls.Certificate {
			return p.ca.Leaf(testpki.LeafSpec{ID: idStockdata, EKU: ekuBoth, NotBefore: time.Now().Add(time.Hour)})
		}, "not yet valid"},
		{"an untrusted issuer", func() *tls.Certificate { return untrusted.Leaf(testpki.LeafSpec{ID: idStockdata, EKU: ekuBoth}) },
			"certificate signed by unknown authority"},
		{"a chain of six certificates", func() *tls.Certificate {
			c := long.Leaf(testpki.LeafSpec{ID: idStockdata, EKU: ekuBoth})
			c.Certificate = append(c.Certificate, p.root.Cert.Raw)
			return c
		}, "chain of 6 certificates, more than 4"},
		{"a chain over 64 KiB", func() *tls.Certificate {
			return p.ca.Leaf(testpki.LeafSpec{ID: idStockdata, EKU: ekuBoth, Pad: 65 << 10})
		},
			"bytes, more than 65536"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server := newSource(idStockdata, p.root.Roots, tc.cert())
			out := handshake(t, ClientConfig(p.client, idStockdata, ALPNH2), ServerConfig(server, []string{ALPNH2}))
			if out.clientErr == nil {
				t.Fatal("client accepted the server")
			}
			t.Logf("client: %v", out.clientErr)
			if !strings.Contains(out.clientErr.Error(), tc.want) {
				t.Errorf("client error %q does not say %q", out.clientErr, tc.want)
			}
			if out.serverErr == nil {
				t.Error("server completed a connection the client refused")
			}
		})
	}
}

func TestServerRefusesClients(t *testing.T) {
	p := newPKI(t)
	untrusted := newRoot(t, "someone else's anchor").Issuer("someone else's issuer")
	cases := []struct {
		name   string
		client func() *tls.Config
		want   string // in the server's error
	}{
		{"a client without a certificate", func() *tls.Config {
			return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPNH2}, MinVersion: tls.VersionTLS13}
		}, "client didn't provide a certificate"},
		{"an untrusted issuer", func() *tls.Config {
			return clientWith(p, untrusted.Leaf(testpki.LeafSpec{ID: idStockweb, EKU: ekuBoth}))
		}, "certificate signed by unknown authority"},
		{"an expired certificate", func() *tls.Config {
			return clientWith(p, p.ca.Leaf(testpki.LeafSpec{ID: idStockweb, EKU: ekuBoth, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Second)}))
		}, "expired"},
		{"a server-only certificate", func() *tls.Config {
			return clientWith(p, p.ca.Leaf(testpki.LeafSpec{ID: idStockweb, EKU: ekuServer}))
		}, "lacks extended key usage clientAuth"},
		{"a certificate without extended key usage", func() *tls.Config {
			return clientWith(p, p.ca.Leaf(testpki.LeafSpec{ID: idStockweb}))
		}, "lacks extended key usage clientAuth"},
		{"a foreign trust domain", func() *tls.Config {
			return clientWith(p, p.ca.Leaf(testpki.LeafSpec{ID: idForeign, EKU: ekuBoth}))
		}, `not "cluster.local"`},
		{"a DNS name instead of a SPIFFE ID", func() *tls.Config {
			return clientWith(p, p.ca.Leaf(testpki.LeafSpec{DNS: []string{"stockweb.web.svc"}, EKU: ekuBoth}))
		}, "no SPIFFE ID"},
		{"a client offering only the application's protocols", func() *tls.Config {
			cfg := ClientConfig(p.client, idStockdata, ALPNH2)
			cfg.NextProtos = []string{"h2", "http/1.1"}
			return cfg
		}, "unsupported application protocols"},
		{"a client offering no ALPN", func() *tls.Config {
			cfg := ClientConfig(p.client, idStockdata, ALPNH2)
			cfg.NextProtos = nil
			cfg.VerifyConnection = nil // the client's own check would refuse first
			return cfg
		}, `negotiated ALPN ""`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := handshake(t, tc.client(), ServerConfig(p.server, []string{ALPNH2, ALPNTCP}))
			if out.serverErr == nil {
				t.Fatal("server accepted the client")
			}
			t.Logf("server: %v", out.serverErr)
			if !strings.Contains(out.serverErr.Error(), tc.want) {
				t.Errorf("server error %q does not say %q", out.serverErr, tc.want)
			}
			if out.clientErr == nil {
				t.Error("the client did not learn it was refused")
			}
		})
	}
}

// clientWith is ClientConfig for a client presenting cert.
func clientWith(p *pki, cert *tls.Certificate) *tls.Config {
	return ClientConfig(newSource(idStockweb, p.root.Roots, cert), idStockdata, ALPNH2)
}

func TestNoCertificateYetFailsTheHandshake(t *testing.T) {
	p := newPKI(t)
	t.Run("server", func(t *testing.T) {
		out := handshake(t, ClientConfig(p.client, idStockdata, ALPNH2), ServerConfig(newSource(idStockdata, p.root.Roots, nil), []string{ALPNH2}))
		if out.serverErr == nil || !strings.Contains(out.serverErr.Error(), "no certificate issued yet") {
			t.Errorf("server error = %v", out.serverErr)
		}
	})
	t.Run("client", func(t *testing.T) {
		out := handshake(t, ClientConfig(newSource(idStockweb, p.root.Roots, nil), idStockdata, ALPNH2), ServerConfig(p.server, []string{ALPNH2}))
		if out.clientErr == nil || !strings.Contains(out.clientErr.Error(), "no certificate issued yet") {
			t.Errorf("client error = %v", out.clientErr)
		}
	})
}

func TestPeerIDNeedsACompletedHandshake(t *testing.T) {
	if _, err := PeerID(tls.ConnectionState{}); err == nil {
		t.Error("PeerID of an empty state succeeded")
	}
	if _, err := PeerID(tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{{}}}); err == nil {
		t.Error("PeerID of a certificate without a URI SAN succeeded")
	}
}

// TestRenewal swaps both Sources' certificates, as a renewal at 70 % of their life does: the
// next handshake presents the new ones, and a connection made before keeps working.
func TestRenewal(t *testing.T) {
	p := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	scfg := ServerConfig(p.server, []string{ALPNTCP})
	seen := make(chan *x509.Certificate, 2) // the client certificate of each connection
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				sc := tls.Server(c, scfg)
				if err := sc.Handshake(); err != nil {
					t.Errorf("server handshake: %v", err)
					return
				}
				seen <- sc.ConnectionState().PeerCertificates[0]
				io.Copy(sc, sc) // echo
			}()
		}
	}()
	dial := func() *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), ClientConfig(p.client, idStockdata, ALPNTCP))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}
	echo := func(c *tls.Conn, msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, b, err)
		}
	}
	serialOf := func(c *tls.Certificate) string { return c.Leaf.SerialNumber.String() }

	old := dial()
	echo(old, "before renewal")
	oldServer, oldClient := old.ConnectionState().PeerCertificates[0], <-seen
	cs, _ := p.client.Certificate()
	if oldClient.SerialNumber.String() != serialOf(cs) {
		t.Fatalf("server saw client serial %v, want %v", oldClient.SerialNumber, serialOf(cs))
	}

	newServer := p.ca.Leaf(testpki.LeafSpec{ID: idStockdata, EKU: ekuBoth})
	newClient := p.ca.Leaf(testpki.LeafSpec{ID: idStockweb, EKU: ekuBoth})
	p.server.cert.Store(newServer)
	p.client.cert.Store(newClient)

	fresh := dial()
	echo(fresh, "after renewal")
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber.String(); got != serialOf(newServer) || got == oldServer.SerialNumber.String() {
		t.Errorf("new connection: server serial %s, want the renewed %s", got, serialOf(newServer))
	}
	if got := (<-seen).SerialNumber.String(); got != serialOf(newClient) {
		t.Errorf("new connection: client serial %s, want the renewed %s", got, serialOf(newClient))
	}
	echo(old, "the old connection still works")
	if got := old.ConnectionState().PeerCertificates[0]; got.SerialNumber.Cmp(oldServer.SerialNumber) != 0 {
		t.Errorf("old connection's peer changed to %v", got.SerialNumber)
	}
}

func TestVerifyPeerWithoutRootsRefuses(t *testing.T) {
	p := newPKI(t)
	cert, _ := p.server.Certificate()
	_, err := spiffe.VerifyPeer([]*x509.Certificate{cert.Leaf}, nil, x509.ExtKeyUsageServerAuth, idStockdata.TrustDomain(), time.Now())
	if err == nil || !strings.Contains(err.Error(), "no trust anchors") {
		t.Errorf("VerifyPeer without roots = %v; it must not fall back to the system roots", err)
	}
}
