package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// serveTCPAt runs handle for every connection to addr (one address, not every one) in pod.
func serveTCPAt(t testing.TB, pod *netns.Pod, addr netip.AddrPort, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	if err := pod.NS.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
}

// serveHTTPAt runs an HTTP/1.1 and h2c server answering name on addr in pod.
func serveHTTPAt(t testing.TB, pod *netns.Pod, addr netip.AddrPort, name string) {
	t.Helper()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Protocols: new(http.Protocols),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %s", name, r.Proto) })}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	var ln net.Listener
	if err := pod.NS.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// echoes reports whether a connection from ns to dst echoes what it is sent. A connection the
// proxy closes (it could not reach an application) reads EOF at once.
func echoes(t testing.TB, ns *netns.NS, dst netip.AddrPort) bool {
	t.Helper()
	c, err := ns.DialContext(t.Context(), "tcp", dst.String())
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	got := make([]byte, 4)
	_, err = io.ReadFull(c, got)
	return err == nil && string(got) == "ping"
}

// httpGet returns the status and body of GET http://dst/ from ns, over HTTP/1.1 or, with h2,
// HTTP/2 with prior knowledge; status 0 when no response came.
func httpGet(ns *netns.NS, dst netip.AddrPort, h2 bool) (int, string) {
	tr := &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true, Protocols: new(http.Protocols)}
	if h2 {
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: tr}).Get("http://" + dst.String() + "/")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	loopback6 = netip.IPv6Loopback()
)

// TestInboundReachesOnlyWhatTheAppExposes: the inbound proxy forwards to the pod address the
// client dialled, so a port the application bound to loopback stays private to the pod, as it
// is without the mesh; one bound to the pod address or to every address is served. A port in
// --inbound-loopback-ports is the documented exception, forwarded to 127.0.0.1. The
// application calling its own pod address still goes through its inbound proxy, and the
// proxy's own connection to the pod address is not redirected back into it.
func TestInboundReachesOnlyWhatTheAppExposes(t *testing.T) {
	topo := nstest.Topology(t)
	client, server := addPod(t, topo, "client"), addPod(t, topo, "server")
	for _, a := range []netip.Addr{loopback4, loopback6} {
		serveTCPAt(t, server, netip.AddrPortFrom(a, 9001), echo) // loopback only, like a Redis left at its default bind
		serveHTTPAt(t, server, netip.AddrPortFrom(a, 8081), "loopback-app")
	}
	for _, fam := range families {
		serveTCPAt(t, server, netip.AddrPortFrom(fam.addr(server), 9002), echo) // the pod address only
		serveHTTPAt(t, server, netip.AddrPortFrom(fam.addr(server), 8082), "pod-address-app")
	}
	serveTCP(t, server, 9003, echo)                                  // every address
	serveTCPAt(t, server, netip.AddrPortFrom(loopback4, 9004), echo) // loopback only, opted in
	srv := mesh(t, server, "", "--inbound-loopback-ports", "9004")
	mesh(t, client, "")

	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			at := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(fam.addr(server), port) }
			for _, tt := range []struct {
				what string
				port uint16
				want bool
			}{
				{"an app bound to loopback is not reachable from another pod", 9001, false},
				{"an app bound to the pod address is reachable", 9002, true},
				{"an app bound to every address is reachable", 9003, true},
				{"a loopback port opted in with --inbound-loopback-ports is reachable", 9004, true},
			} {
				t.Run(tt.what, func(t *testing.T) {
					if got := echoes(t, client.NS, at(tt.port)); got != tt.want {
						t.Fatalf("TCP to %s through the mesh echoed: %v, want %v", at(tt.port), got, tt.want)
					}
				})
			}
			for _, h2 := range []bool{false, true} {
				proto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
				t.Run(proto+" to an app bound to loopback is not served", func(t *testing.T) {
					if code, body := httpGet(client.NS, at(8081), h2); code == http.StatusOK || strings.Contains(body, "loopback-app") {
						t.Fatalf("GET %s: %d %q: the loopback-only app answered another pod", at(8081), code, body)
					}
				})
				t.Run(proto+" to an app bound to the pod address is served", func(t *testing.T) {
					if code, body := httpGet(client.NS, at(8082), h2); code != http.StatusOK || body != "pod-address-app "+proto {
						t.Fatalf("GET %s: %d %q, want 200 from the app", at(8082), code, body)
					}
				})
			}
		})
	}
	srv.waitLog(t, "relay dial failed") // the proxy tried the pod address, where nothing listens on 9001

	t.Run("the app calling its own pod address goes through its inbound proxy", func(t *testing.T) {
		own := netip.AddrPortFrom(server.IPv4, 9002)
		c := dial(t, server.NS, own)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("self"))
		if got := make([]byte, 4); func() bool { _, err := io.ReadFull(c, got); return err != nil }() || string(got) != "self" {
			t.Fatalf("the app's call to its own pod address %s was not echoed: %q", own, got)
		}
		// While it is open, the inbound proxy holds it: it was redirected, and the proxy's own
		// connection onward to the pod address was not (or it would have looped back in).
		code, body := srv.admin(t, "/debug/connections")
		var conns []struct {
			Direction string `json:"direction"`
			Client    string `json:"client"`
			Dst       string `json:"original_destination"`
		}
		if code != http.StatusOK || json.Unmarshal([]byte(body), &conns) != nil {
			t.Fatalf("/debug/connections: %d %s", code, body)
		}
		inbound := 0
		for _, cn := range conns {
			if cn.Direction == "inbound" && cn.Dst == own.String() {
				inbound++
				if cn.Client != c.LocalAddr().String() {
					t.Errorf("inbound connection to %s from %s, want from the app's %s", own, cn.Client, c.LocalAddr())
				}
			}
		}
		if inbound != 1 {
			t.Fatalf("the inbound proxy holds %d connections to %s, want the app's one (a loop would make more): %v", inbound, own, conns)
		}
	})
}
