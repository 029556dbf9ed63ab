package detect

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
)

func classifySeeds(f *testing.F) {
	for _, s := range []string{
		"", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "\r\nPOST /x HTTP/1.0\r\n", string(h2Preface),
		"PRI * HTTP/2.0\r\n\r\nSX", "PING\r\n", "SSH-2.0-x\r\n", "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
		"\x00\x00\x00\x08\x04\xd2\x16\x2f", "GET / HTTP/1.",
	} {
		f.Add([]byte(s))
	}
	f.Add(clientHello(f, &tls.Config{ServerName: "stockdata.stocks", NextProtos: []string{"detour/h2", "h2"}}))
}

// FuzzClassify checks that Classify never panics and that its answers are stable as bytes
// arrive: not final means Opaque, and a final answer never changes with more bytes.
func FuzzClassify(f *testing.F) {
	classifySeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkStable(t, b)
	})
}

// FuzzParseClientHello checks that ParseClientHello never panics, that it accepts only what
// Classify calls TLS, that an accepted ClientHello has sensible contents, and that cutting an
// accepted input short never turns it into a different success.
func FuzzParseClientHello(f *testing.F) {
	classifySeeds(f)
	f.Add(clientHello(f, &tls.Config{ServerName: "a.b", MaxVersion: tls.VersionTLS12}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseClientHello(b)
		if err != nil {
			if h != nil {
				t.Fatalf("a ClientHello and an error: %+v, %v", h, err)
			}
			return
		}
		if p, final := Classify(b); p != TLS || !final {
			t.Fatalf("ParseClientHello accepted what Classify calls %v (final %v)", p, final)
		}
		for _, p := range h.ALPN {
			if p == "" {
				t.Fatal("an empty ALPN name was accepted")
			}
		}
		if bytes.ContainsAny([]byte(h.ServerName), "\x00 \r\n") {
			t.Fatalf("server name %q has unprintable bytes", h.ServerName)
		}
		for k := 0; k < len(b); k++ {
			h2, err := ParseClientHello(b[:k])
			if err == nil && (h2.ServerName != h.ServerName || !equalStrings(h2.ALPN, h.ALPN)) {
				t.Fatalf("a prefix of %d bytes parsed to %+v, the whole input to %+v", k, h2, h)
			}
		}
	})
}

// FuzzSniff checks that Sniff never loses or reorders a byte, however the client's writes are
// cut and whatever the byte limit.
func FuzzSniff(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), uint8(3), uint16(16))
	f.Add(append(bytes.Clone(h2Preface), 0, 0, 0, 4, 0, 0, 0, 0, 0), uint8(1), uint16(24))
	f.Add(clientHello(f, &tls.Config{ServerName: "a.b"}), uint8(50), uint16(4096))
	f.Add([]byte("\x00binary"), uint8(0), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, max uint16) {
		client, server := net.Pipe()
		go func() {
			step := int(chunk) + 1
			for off := 0; off < len(data); off += step {
				if _, err := client.Write(data[off:min(off+step, len(data))]); err != nil {
					break
				}
			}
			client.Close()
		}()
		res, conn, err := Sniff(server, 0, int(max))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(conn)
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		server.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("replayed %q, want %q (result %+v)", got, data, res)
		}
		if pc, ok := conn.(*Conn); ok {
			if len(pc.Peeked()) != 0 {
				t.Fatalf("%d peeked bytes left after reading to EOF", len(pc.Peeked()))
			}
		}
		if p, final := Classify(data); final && res.Protocol != p && len(data) <= int(max) && !res.EOF {
			t.Fatalf("Sniff said %v, Classify of all the data says %v", res.Protocol, p)
		}
	})
}
