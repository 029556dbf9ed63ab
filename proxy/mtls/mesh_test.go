package mtls

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/proxy/h2"
)

// serveH2C serves h on a loopback listener over HTTP/2 with prior knowledge until the test ends.
func serveH2C(t *testing.T, h http.Handler) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// serve accepts on a loopback listener until the test ends, handing each connection to fn.
func serve(t *testing.T, fn func(net.Conn)) netip.AddrPort {
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
				fn(c)
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// TestMeshHopWithPolicy wires the pieces the way the proxy does, over loopback: a client speaks
// h2c to an outbound h2 engine, which dials the inbound proxy with Dialer (detour/h2); the
// inbound terminates with ServerConfig, hands the connection to its h2 engine with the peer's
// identity, and its Router asks Policy before routing to the application.
func TestMeshHopWithPolicy(t *testing.T) {
	p := newPKI(t)
	quiet := slog.New(slog.DiscardHandler)

	app := serveH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from stockdata")
	}))

	port := strconv.Itoa(int(app.Port()))
	cases := []struct {
		name       string
		allow      string
		wantStatus int
		wantBody   string
	}{
		{"an allowed peer reaches the application", port + "=" + idStockweb.String(), 200, "hello from stockdata"},
		{"a peer off the allow-list is refused with 403", port + "=" + idOther.String(),
			403, idStockweb.String() + " may not call port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			policy, err := ParsePolicy("strict", "", tc.allow)
			if err != nil {
				t.Fatal(err)
			}
			h2in := h2.NewServer(h2.Config{Logger: quiet, Router: h2.RouterFunc(func(dst netip.AddrPort, h *h2.Head) (h2.Route, error) {
				if ok, reason := policy.DecideString(dst.Port(), h.Conn.Peer); !ok {
					return h2.Route{}, &h2.Refusal{Message: reason}
				}
				return h2.Route{Addr: dst}, nil // the application listens on loopback at dst
			})})
			t.Cleanup(func() { h2in.Close() })
			scfg := ServerConfig(p.server, []string{ALPNH2, ALPNTCP})
			inbound := serve(t, func(c net.Conn) {
				c.SetDeadline(time.Now().Add(20 * time.Second))
				sc := tls.Server(c, scfg)
				if err := sc.Handshake(); err != nil {
					t.Errorf("inbound handshake: %v", err)
					return
				}
				c.SetDeadline(time.Time{})
				cs := sc.ConnectionState()
				peer, err := PeerID(cs)
				if err != nil || cs.NegotiatedProtocol != ALPNH2 {
					t.Errorf("inbound: peer %v, %v, ALPN %q", peer, err, cs.NegotiatedProtocol)
					return
				}
				h2in.ServeConnWith(context.Background(), sc, app, h2.ConnInfo{Peer: peer.String()})
			})

			lookup := func(addr netip.AddrPort) (spiffeid.ID, bool) { return idStockdata, addr == inbound }
			h2out := h2.NewServer(h2.Config{Logger: quiet, Dial: Dialer(p.client, lookup, ALPNH2),
				Router: h2.RouterFunc(func(netip.AddrPort, *h2.Head) (h2.Route, error) { return h2.Route{Addr: inbound}, nil })})
			t.Cleanup(func() { h2out.Close() })
			outbound := serve(t, func(c net.Conn) { h2out.ServeConn(context.Background(), c, app) })

			tr := &http.Transport{Protocols: new(http.Protocols)}
			tr.Protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge, as gRPC speaks
			t.Cleanup(tr.CloseIdleConnections)
			client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
			resp, err := client.Get("http://" + outbound.String() + "/quote")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus || !strings.Contains(string(body), tc.wantBody) {
				t.Errorf("got %d %q, want %d and %q", resp.StatusCode, body, tc.wantStatus, tc.wantBody)
			}
		})
	}
}
