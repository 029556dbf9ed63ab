package detect

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"
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

func TestSniff(t *testing.T) {
	hello := clientHello(t, &tls.Config{ServerName: "stockdata.stocks", NextProtos: []string{"detour/h2", "h2"}})
	tests := []struct {
		name   string
		chunks [][]byte // what the client writes, each once Sniff has read the ones before
		close  bool     // half-close after writing
		max    int
		want   Result
		peeked int // bytes Sniff read; -1 for all that was written
	}{
		{
			name:   "an HTTP/1 request in one write",
			chunks: [][]byte{[]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")},
			want:   Result{Protocol: HTTP1}, peeked: -1,
		},
		{
			name:   "an HTTP/2 preface trickling in",
			chunks: [][]byte{h2Preface[:3], h2Preface[3:10], h2Preface[10:]},
			want:   Result{Protocol: HTTP2}, peeked: -1,
		},
		{
			name:   "a TLS ClientHello split mid-record",
			chunks: [][]byte{hello[:3], hello[3:200], hello[200:]},
			want:   Result{Protocol: TLS, Hello: &ClientHello{ServerName: "stockdata.stocks", ALPN: []string{"detour/h2", "h2"}}}, peeked: -1,
		},
		{
			name:   "a ClientHello larger than max is TLS without a hello",
			chunks: [][]byte{hello},
			max:    100,
			want:   Result{Protocol: TLS}, peeked: 100,
		},
		{
			name:   "a request line longer than max is opaque",
			chunks: [][]byte{[]byte("GET /" + string(bytes.Repeat([]byte("a"), 200)) + " HTTP/1.1\r\n")},
			max:    64,
			want:   Result{Protocol: Opaque}, peeked: 64,
		},
		{
			// Not HTTP/2 to the proxy: relayed byte for byte, though RFC 9113 §3.4 would have
			// an HTTP/2 server close it (transparency wins on ports not declared HTTP/2).
			name:   "an invalid HTTP/2 preface is opaque and replayed whole",
			chunks: [][]byte{[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\rnot HTTP/2 after all")},
			want:   Result{Protocol: Opaque}, peeked: -1,
		},
		{
			name:   "a binary protocol is opaque at its first byte",
			chunks: [][]byte{{0, 0, 0, 8, 4, 210, 22, 47}},
			want:   Result{Protocol: Opaque}, peeked: -1,
		},
		{
			name:   "a client that half-closes early is opaque with EOF",
			chunks: [][]byte{[]byte("GE")},
			close:  true,
			want:   Result{Protocol: Opaque, EOF: true}, peeked: -1,
		},
		{
			name:  "a client that closes without a byte is opaque with EOF",
			close: true,
			want:  Result{Protocol: Opaque, EOF: true}, peeked: 0,
		},
		{
			name:   "a client that stops mid-request line times out",
			chunks: [][]byte{[]byte("GET /slow")},
			want:   Result{Protocol: Opaque, TimedOut: true}, peeked: -1,
		},
		{
			name: "a server-speaks-first client times out without a byte",
			want: Result{Protocol: Opaque, TimedOut: true}, peeked: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, raw := tcpPair(t)
			server := &readCounter{TCPConn: raw, more: make(chan struct{}, 1)}
			sniffed := make(chan struct{})
			var written []byte
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				sent := 0
				for _, c := range tt.chunks {
					// Each chunk in a read of its own: the next is sent once Sniff has read
					// every byte sent so far (or has decided and returned).
					for server.n.Load() < int64(sent) {
						select {
						case <-server.more:
						case <-sniffed:
						}
						if isClosed(sniffed) {
							break
						}
					}
					client.Write(c)
					sent += len(c)
				}
				if tt.close {
					client.CloseWrite()
				}
			}()
			for _, c := range tt.chunks {
				written = append(written, c...)
			}
			max := tt.max
			if max == 0 {
				max = 16 << 10
			}
			// A long timeout unless the case is about timing out, so a slow machine does not
			// turn a trickle into a timeout.
			timeout := 10 * time.Second
			if tt.want.TimedOut {
				timeout = 200 * time.Millisecond
			}
			res, conn, err := Sniff(server, timeout, max)
			close(sniffed)
			if err != nil {
				t.Fatal(err)
			}
			if !sameResult(res, tt.want) {
				t.Errorf("Result = %+v (hello %+v), want %+v (hello %+v)", res, res.Hello, tt.want, tt.want.Hello)
			}
			peeked := tt.peeked
			if peeked < 0 {
				peeked = len(written)
			}
			if pc, ok := conn.(*Conn); ok {
				if len(pc.Peeked()) != peeked || pc.NetConn() != net.Conn(server) {
					t.Errorf("peeked %d bytes, want %d; NetConn is the raw conn: %v", len(pc.Peeked()), peeked, pc.NetConn() == server)
				}
			} else if conn != net.Conn(server) || peeked != 0 {
				t.Errorf("Sniff returned %T, want the raw conn only when nothing was peeked (peeked %d)", conn, peeked)
			}
			// Everything the client wrote comes out of the returned conn, in order.
			<-wrote
			client.CloseWrite()
			got, err := io.ReadAll(conn)
			if err != nil {
				t.Fatalf("reading the sniffed conn: %v", err)
			}
			if !bytes.Equal(got, written) {
				t.Errorf("replayed %q, want %q", got, written)
			}
		})
	}
}

// readCounter is a TCP connection that counts the bytes read from it and signals each read.
type readCounter struct {
	*net.TCPConn
	n    atomic.Int64
	more chan struct{}
}

func (c *readCounter) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	c.n.Add(int64(n))
	select {
	case c.more <- struct{}{}:
	default:
	}
	return n, err
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func sameResult(a, b Result) bool {
	if a.Protocol != b.Protocol || a.TimedOut != b.TimedOut || a.EOF != b.EOF || (a.Hello == nil) != (b.Hello == nil) {
		return false
	}
	return a.Hello == nil || a.Hello.ServerName == b.Hello.ServerName && equalStrings(a.Hello.ALPN, b.Hello.ALPN)
}

func TestSniffClearsTheReadDeadline(t *testing.T) {
	// A server-speaks-first exchange: Sniff times out, then the server greets and the client
	// answers; the read must not fail on a stale deadline. Sniff's own deadline passed before
	// it returned, and Go fails a read past its deadline before looking for data, so a deadline
	// left behind fails this read however soon the answer comes: no pause is needed to show it.
	client, server := tcpPair(t)
	res, conn, err := Sniff(server, 20*time.Millisecond, 1024)
	if err != nil || !res.TimedOut {
		t.Fatalf("Sniff = %+v, %v; want a timeout", res, err)
	}
	if _, err := conn.Write([]byte("220 smtp ready\r\n")); err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64)
		client.Read(buf)
		client.Write([]byte("EHLO a\r\n"))
	}()
	buf := make([]byte, 8)
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("read after the sniff timeout: %v", err)
	}
	if string(buf) != "EHLO a\r\n" {
		t.Errorf("read %q", buf)
	}
}

func TestSniffReturnsReadErrors(t *testing.T) {
	client, server := tcpPair(t)
	client.SetLinger(0)
	client.Close() // RST
	_, _, err := Sniff(server, time.Second, 1024)
	if err == nil {
		t.Fatal("Sniff on a reset connection succeeded")
	}
	if errors.Is(err, io.EOF) {
		t.Errorf("a reset came back as EOF")
	}
}

func TestConnWriteToSendsPeekedBytesThenTheRest(t *testing.T) {
	// The relay path: io.Copy from a sniffed conn into a TCP conn sends the peeked bytes and
	// then splices the rest; the receiver sees one unbroken stream.
	client, server := tcpPair(t)
	out, sink := tcpPair(t)
	payload := make([]byte, 1<<20)
	for i := range payload {
		payload[i] = byte(rand.Uint32())
	}
	copy(payload, "GET / HTTP/1.1\r\n")
	sniffed := make(chan struct{})
	go func() {
		client.Write(payload[:100])
		<-sniffed // the rest after detection: the peeked bytes are exactly the first 100
		client.Write(payload[100:])
		client.CloseWrite()
	}()
	res, conn, err := Sniff(server, time.Second, 4096)
	close(sniffed)
	if err != nil || res.Protocol != HTTP1 {
		t.Fatalf("Sniff = %+v, %v", res, err)
	}
	done := make(chan []byte)
	go func() {
		got, _ := io.ReadAll(sink)
		done <- got
	}()
	n, err := io.Copy(out, conn)
	if err != nil || n != int64(len(payload)) {
		t.Fatalf("io.Copy = %d, %v; want %d", n, err, len(payload))
	}
	out.CloseWrite()
	if got := <-done; !bytes.Equal(got, payload) {
		t.Errorf("the receiver got %d bytes that differ from the %d sent", len(got), len(payload))
	}
}

func TestConnCloseWrite(t *testing.T) {
	client, server := tcpPair(t)
	client.Write([]byte("x"))
	_, conn, _ := Sniff(server, time.Second, 16)
	if err := conn.(*Conn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("the peer read %d, %v after CloseWrite; want EOF", n, err)
	}
	c, _ := net.Pipe()
	if err := (&Conn{Conn: c}).CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CloseWrite on a pipe = %v, want ErrUnsupported", err)
	}
}
