package relay

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/detourmesh/detour/proxy/detect"
)

// FuzzRelay sends arbitrary bytes both ways through a Relay over loopback TCP, cut into
// arbitrary writes, with either side finishing first and the client optionally sniffed first,
// and checks that each side receives exactly what the other sent and Relay counts it.
func FuzzRelay(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\n\r\n"), uint8(3), uint8(0), true, false)
	f.Add([]byte{}, []byte("220 banner\r\n"), uint8(0), uint8(1), false, true)
	f.Add(bytes.Repeat([]byte{0x16, 3, 1}, 1000), []byte{}, uint8(255), uint8(7), true, true)
	f.Fuzz(func(t *testing.T, up, down []byte, upChunk, downChunk uint8, sniff, serverFirst bool) {
		var wrap func(net.Conn) net.Conn
		if sniff {
			wrap = func(c net.Conn) net.Conn {
				// A short timeout: an empty upload must not stall the fuzzer.
				_, conn, err := detect.Sniff(c, 5*time.Millisecond, 64)
				if err != nil {
					t.Error(err)
				}
				return conn
			}
		}
		p := startRelay(t, context.Background(), wrap)
		send := func(c *net.TCPConn, data []byte, chunk uint8) {
			step := int(chunk) + 1
			for off := 0; off < len(data); off += step {
				if _, err := c.Write(data[off:min(off+step, len(data))]); err != nil {
					return
				}
			}
			c.CloseWrite()
		}
		gotUp, gotDown := make(chan []byte, 1), make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(p.server); gotUp <- b }()
		go func() { b, _ := io.ReadAll(p.client); gotDown <- b }()
		if serverFirst {
			send(p.server, down, downChunk)
			send(p.client, up, upChunk)
		} else {
			go send(p.server, down, downChunk)
			send(p.client, up, upChunk)
		}
		if b := <-gotUp; !bytes.Equal(b, up) {
			t.Fatalf("the server got %q, want %q", b, up)
		}
		if b := <-gotDown; !bytes.Equal(b, down) {
			t.Fatalf("the client got %q, want %q", b, down)
		}
		r := p.wait(t)
		if r.err != nil || r.aToB != int64(len(up)) || r.bToA != int64(len(down)) {
			t.Fatalf("Relay = %d, %d, %v; want %d, %d, nil", r.aToB, r.bToA, r.err, len(up), len(down))
		}
	})
}
