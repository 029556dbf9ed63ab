package http1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"golang.org/x/net/websocket"
)

func TestAWebSocketEchoWorksThroughTheProxy(t *testing.T) {
	up := startUpstream(t, websocket.Handler(func(ws *websocket.Conn) {
		for i := 0; i < 100; i++ {
			var msg string
			if websocket.Message.Receive(ws, &msg) != nil || websocket.Message.Send(ws, msg) != nil {
				return
			}
		}
	}).ServeHTTP)
	rt := &rrRouter{addrs: []netip.AddrPort{up.addr}}
	p := startProxy(t, Config{Router: rt})
	cfg, err := websocket.NewConfig("ws://chat.example/echo", "http://chat.example/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, p.rawConn(t))
	if err != nil {
		t.Fatalf("handshake through the proxy: %v", err)
	}
	for _, msg := range []string{"hello", "world", string(make([]byte, 100000))} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatal(err)
		}
		if got != msg {
			t.Fatalf("echo of %d bytes came back as %d bytes", len(msg), len(got))
		}
	}
	ws.Close()
	res := rt.waitResults(t, 1)
	if res[0].Status != http.StatusSwitchingProtocols || res[0].ReqBytes == 0 || res[0].RespBytes == 0 {
		t.Fatalf("Result %+v, want 101 with relayed bytes", res[0])
	}
	if r := up.lastRequest(t); r.Header.Get("Sec-WebSocket-Key") == "" || r.Host != "chat.example" {
		t.Fatalf("upstream saw %v Host %q", r.Header, r.Host)
	}
}

// rawUpgradeUpstream accepts connections, answers 101 with a greeting in the same write, echoes
// until the client half-closes, then says bye and closes.
func rawUpgradeUpstream(t *testing.T) netip.AddrPort {
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
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nwelcome;")
				io.Copy(c, br)
				io.WriteString(c, ";bye")
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

func TestAnUpgradedConnectionRelaysBufferedBytesAndHalfCloses(t *testing.T) {
	rt := &rrRouter{addrs: []netip.AddrPort{rawUpgradeUpstream(t)}}
	p := startProxy(t, Config{Router: rt})
	c := p.rawConn(t)
	// The first frame rides in the same packet as the request: it sits in the proxy's read buffer.
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly;")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "websocket" {
		t.Fatalf("got %d %v", resp.StatusCode, resp.Header)
	}
	io.WriteString(c, "late")
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if want := "welcome;early;late;bye"; string(b) != want {
		t.Fatalf("client read %q, want %q", b, want)
	}
	res := rt.waitResults(t, 1)
	if res[0].Err != nil || res[0].ReqBytes != int64(len("early;late")) {
		t.Fatalf("Result %+v", res[0])
	}
}
