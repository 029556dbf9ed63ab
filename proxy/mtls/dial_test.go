package mtls

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/internal/testpki"
	"github.com/detourmesh/detour/proxy/h2"
	"github.com/detourmesh/detour/proxy/http1"
)

// The Dialer fits both engines' hooks.
var (
	_ h2.Dialer    = Dialer(nil, nil, ALPNH2)
	_ http1.Dialer = Dialer(nil, nil, ALPNTCP)
)

// echoServer accepts connections, wraps them with wrap (nil: plaintext) and echoes.
func echoServer(t *testing.T, wrap func(net.Conn) net.Conn) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				if wrap != nil {
					c = wrap(c)
				}
				io.Copy(c, c)
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

func TestDialer(t *testing.T) {
	p := newPKI(t)
	scfg := ServerConfig(p.server, []string{ALPNH2, ALPNTCP})
	meshed := echoServer(t, func(c net.Conn) net.Conn { return tls.Server(c, scfg) })
	impostor := echoServer(t, func(c net.Conn) net.Conn {
		other := newSource(idOther, p.root.Roots, p.ca.Leaf(testpki.LeafSpec{ID: idOther, EKU: ekuBoth}))
		return tls.Server(c, ServerConfig(other, []string{ALPNH2}))
	})
	plain := echoServer(t, nil)
	identities := map[netip.AddrPort]spiffeid.ID{meshed: idStockdata, impostor: idStockdata}
	lookup := func(addr netip.AddrPort) (spiffeid.ID, bool) {
		id, ok := identities[addr]
		return id, ok
	}
	dial := Dialer(p.client, lookup, ALPNH2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	echo := func(c net.Conn) {
		t.Helper()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Fatalf("echo: %q, %v", b, err)
		}
	}

	t.Run("a meshed endpoint gets mutual TLS, handshake done", func(t *testing.T) {
		c, err := dial(ctx, meshed)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc, ok := c.(*tls.Conn)
		if !ok {
			t.Fatalf("got %T, want *tls.Conn", c)
		}
		cs := tc.ConnectionState()
		if !cs.HandshakeComplete || cs.NegotiatedProtocol != ALPNH2 {
			t.Errorf("handshake complete %v, ALPN %q", cs.HandshakeComplete, cs.NegotiatedProtocol)
		}
		if id, err := PeerID(cs); err != nil || id != idStockdata {
			t.Errorf("PeerID = %v, %v", id, err)
		}
		echo(c)
	})
	t.Run("an endpoint that is not meshed gets plain TCP", func(t *testing.T) {
		c, err := dial(ctx, plain)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, ok := c.(*net.TCPConn); !ok {
			t.Fatalf("got %T, want *net.TCPConn", c)
		}
		echo(c)
	})
	t.Run("a meshed endpoint with the wrong identity is refused", func(t *testing.T) {
		c, err := dial(ctx, impostor)
		if err == nil {
			c.Close()
			t.Fatal("dialed an impostor")
		}
		if want := "server presented " + idOther.String() + ", discovery announced " + idStockdata.String(); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	})
	t.Run("a meshed endpoint answering plaintext is refused", func(t *testing.T) {
		identities[plain] = idStockdata // discovery says meshed, the endpoint has no proxy
		defer delete(identities, plain)
		if c, err := dial(ctx, plain); err == nil {
			c.Close()
			t.Fatal("TLS over an echo server succeeded")
		}
	})
}
