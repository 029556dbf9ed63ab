package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/detourmesh/detour/proxy/detect"
)

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// proxied is a client and a server joined by a running Relay, as the proxy joins them: the
// client's connection is accepted by the "proxy", which dials the server.
type proxied struct {
	client, server *net.TCPConn
	done           chan result
}

type result struct {
	aToB, bToA int64
	err        error
}

// startRelay relays between the proxy's ends of two loopback connections. wrap, when set,
// turns the accepted client connection into what the proxy relays (e.g. a sniffed conn).
func startRelay(t *testing.T, ctx context.Context, wrap func(net.Conn) net.Conn) *proxied {
	t.Helper()
	client, accepted := tcpPair(t)
	upstream, server := tcpPair(t)
	p := &proxied{client: client, server: server, done: make(chan result, 1)}
	go func() {
		var a net.Conn = accepted
		if wrap != nil {
			a = wrap(a)
		}
		var r result
		r.aToB, r.bToA, r.err = RelayContext(ctx, a, upstream)
		p.done <- r
	}()
	return p
}

func (p *proxied) wait(t *testing.T) result {
	t.Helper()
	select {
	case r := <-p.done:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("Relay did not return")
		return result{}
	}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRelayCopiesBothWaysExactly(t *testing.T) {
	tests := []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"between raw TCP connections (spliced)", nil},
		{"through a wrapper that hides the TCP connection (pooled buffers)", func(c net.Conn) net.Conn { return opaqueConn{c} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startRelay(t, context.Background(), tt.wrap)
			up, down := randomBytes(t, 4<<20), randomBytes(t, 4<<20)
			gotUp, gotDown := make(chan []byte), make(chan []byte)
			go func() { // the server reads everything, then the client's FIN
				b, _ := io.ReadAll(p.server)
				gotUp <- b
			}()
			go func() {
				b, _ := io.ReadAll(p.client)
				gotDown <- b
			}()
			go func() {
				p.server.Write(down)
				p.server.CloseWrite()
			}()
			p.client.Write(up)
			p.client.CloseWrite()
			if b := <-gotUp; !bytes.Equal(b, up) {
				t.Errorf("the server got %d bytes, not the %d the client sent", len(b), len(up))
			}
			if b := <-gotDown; !bytes.Equal(b, down) {
				t.Errorf("the client got %d bytes, not the %d the server sent", len(b), len(down))
			}
			r := p.wait(t)
			if r.err != nil || r.aToB != int64(len(up)) || r.bToA != int64(len(down)) {
				t.Errorf("Relay = %d, %d, %v; want %d, %d, nil", r.aToB, r.bToA, r.err, len(up), len(down))
			}
		})
	}
}

func TestRelayHalfClose(t *testing.T) {
	// The client sends a request and shuts down its write side; the server answers only after
	// it has seen EOF. The reply must still reach the client.
	p := startRelay(t, context.Background(), nil)
	go func() {
		req, _ := io.ReadAll(p.server)
		p.server.Write(append([]byte("reply to "), req...))
		p.server.Close()
	}()
	p.client.Write([]byte("request"))
	p.client.CloseWrite()
	got, err := io.ReadAll(p.client)
	if err != nil || string(got) != "reply to request" {
		t.Fatalf("the client read %q, %v", got, err)
	}
	if r := p.wait(t); r.err != nil {
		t.Errorf("Relay: %v", r.err)
	}
}

func TestRelayPropagatesAReset(t *testing.T) {
	tests := []struct {
		name  string
		reset func(p *proxied) *net.TCPConn // resets one side, returns the other
	}{
		{"the server resets", func(p *proxied) *net.TCPConn { p.server.SetLinger(0); p.server.Close(); return p.client }},
		{"the client resets", func(p *proxied) *net.TCPConn { p.client.SetLinger(0); p.client.Close(); return p.server }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startRelay(t, context.Background(), nil)
			// Some traffic first, so the relay is mid-stream.
			p.client.Write([]byte("hello"))
			io.ReadFull(p.server, make([]byte, 5))
			other := tt.reset(p)
			r := p.wait(t)
			if !errors.Is(r.err, syscall.ECONNRESET) {
				t.Errorf("Relay error = %v, want ECONNRESET", r.err)
			}
			_, err := other.Read(make([]byte, 1))
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the other side read %v, want a reset (not a clean EOF)", err)
			}
		})
	}
}

func TestRelayServerSpeaksFirst(t *testing.T) {
	// An SMTP-like exchange through detection: the client waits for a banner, so Sniff times
	// out, and the relay must carry the server's bytes first.
	sniffed := make(chan detect.Result, 1)
	p := startRelay(t, context.Background(), func(c net.Conn) net.Conn {
		res, conn, err := detect.Sniff(c, 50*time.Millisecond, 1024)
		if err != nil {
			t.Error(err)
		}
		sniffed <- res
		return conn
	})
	go func() {
		p.server.Write([]byte("220 ready\r\n"))
		line := make([]byte, 6)
		io.ReadFull(p.server, line)
		p.server.Write(append([]byte("250 "), line...))
		p.server.CloseWrite()
	}()
	banner := make([]byte, 11)
	if _, err := io.ReadFull(p.client, banner); err != nil || string(banner) != "220 ready\r\n" {
		t.Fatalf("banner %q, %v", banner, err)
	}
	p.client.Write([]byte("HELO\r\n"))
	p.client.CloseWrite()
	got, _ := io.ReadAll(p.client)
	if string(got) != "250 HELO\r\n" {
		t.Errorf("reply %q", got)
	}
	if res := <-sniffed; !res.TimedOut || res.Protocol != detect.Opaque {
		t.Errorf("Sniff = %+v, want an opaque timeout", res)
	}
	if r := p.wait(t); r.err != nil {
		t.Errorf("Relay: %v", r.err)
	}
}

func TestRelayReplaysSniffedBytesThenSplices(t *testing.T) {
	p := startRelay(t, context.Background(), func(c net.Conn) net.Conn {
		res, conn, err := detect.Sniff(c, 5*time.Second, 1024)
		if err != nil || res.Protocol != detect.HTTP1 {
			t.Errorf("Sniff = %+v, %v", res, err)
		}
		if _, ok := conn.(Peeked); !ok {
			t.Errorf("Sniff returned %T, which Relay does not unwrap", conn)
		}
		return conn
	})
	body := randomBytes(t, 1<<20)
	req := append([]byte("POST /upload HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n"), body...)
	go func() {
		p.client.Write(req)
		p.client.CloseWrite()
	}()
	got, _ := io.ReadAll(p.server)
	if !bytes.Equal(got, req) {
		t.Errorf("the server got %d bytes, not the %d sent, or not in order", len(got), len(req))
	}
	p.server.Close()
	if r := p.wait(t); r.err != nil || r.aToB != int64(len(req)) {
		t.Errorf("Relay = %d, %v; want %d, nil", r.aToB, r.err, len(req))
	}
}

func TestRawTCPUnwrapsWrappers(t *testing.T) {
	client, server := tcpPair(t)
	client.Write([]byte("GET / HTTP/1.1\r\n"))
	_, sniffed, err := detect.Sniff(server, time.Second, 64)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		conn net.Conn
		want *net.TCPConn
	}{
		{"a TCP connection is itself", server, server},
		{"a sniffed connection unwraps to its socket", sniffed, server},
		{"an opaque wrapper hides its socket", opaqueConn{server}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rawTCP(tt.conn); got != tt.want {
				t.Errorf("rawTCP = %p, want %p", got, tt.want)
			}
		})
	}
}

func TestRelayStopsWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	p := startRelay(t, ctx, nil)
	stopped := errors.New("proxy shutting down")
	cancel(stopped)
	if r := p.wait(t); !errors.Is(r.err, stopped) {
		t.Errorf("Relay error = %v, want the cancel cause", r.err)
	}
	if _, err := p.client.Read(make([]byte, 1)); err == nil {
		t.Error("the client connection is still open")
	}
}

func TestRelayOverPipes(t *testing.T) {
	// Connections that cannot half-close still relay; the relay ends when both sides close.
	a, aPeer := net.Pipe()
	b, bPeer := net.Pipe()
	done := make(chan result, 1)
	go func() {
		var r result
		r.aToB, r.bToA, r.err = Relay(a, b)
		done <- r
	}()
	go func() {
		aPeer.Write([]byte("ping"))
		buf := make([]byte, 4)
		io.ReadFull(aPeer, buf)
		aPeer.Close()
	}()
	buf := make([]byte, 4)
	io.ReadFull(bPeer, buf)
	bPeer.Write([]byte("pong"))
	bPeer.Close()
	r := <-done
	if r.aToB != 4 || r.bToA != 4 {
		t.Errorf("Relay = %d, %d, %v; want 4, 4", r.aToB, r.bToA, r.err)
	}
}

// opaqueConn hides the connection it wraps, so Relay cannot splice.
type opaqueConn struct{ net.Conn }

func BenchmarkRelayThroughput(b *testing.B) {
	for _, bc := range []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"splice", nil},
		{"buffered", func(c net.Conn) net.Conn { return opaqueConn{c} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			client, accepted := tcpPair(b)
			upstream, server := tcpPair(b)
			var a net.Conn = accepted
			if bc.wrap != nil {
				a = bc.wrap(a)
			}
			done := make(chan struct{})
			go func() {
				Relay(a, upstream)
				close(done)
			}()
			const chunk = 1 << 20
			buf := make([]byte, chunk)
			sink := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			go func() {
				for range b.N {
					if _, err := client.Write(buf); err != nil {
						return
					}
				}
			}()
			for range b.N {
				if _, err := io.ReadFull(server, sink); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			// CPU of the whole process (client and server included) per MiB: the relay's share
			// is the difference between the two variants.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/MiB")
			client.CloseWrite()
			server.CloseWrite()
			<-done
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
