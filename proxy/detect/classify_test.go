package detect

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	hello := clientHello(t, &tls.Config{ServerName: "stockdata.stocks"})
	tests := []struct {
		name  string
		in    string
		want  Protocol
		final bool
	}{
		{"nothing yet could be anything", "", Opaque, false},
		{"the HTTP/2 preface is HTTP/2", string(h2Preface), HTTP2, true},
		{"the HTTP/2 preface followed by a SETTINGS frame is HTTP/2", string(h2Preface) + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", HTTP2, true},
		{"most of the HTTP/2 preface is not final", string(h2Preface[:23]), Opaque, false},
		{"PRI alone is not final", "PRI", Opaque, false},
		{"a preface that breaks off at the end is opaque", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", Opaque, true},
		{"an HTTP/1.1 GET is HTTP/1", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1, true},
		{"an HTTP/1.0 request line is HTTP/1 before its CRLF", "POST /x?y=1 HTTP/1.0", HTTP1, true},
		{"an extension method is HTTP/1", "PROPFIND /dav HTTP/1.1\r\n", HTTP1, true},
		{"a CONNECT with an authority target is HTTP/1", "CONNECT stockdata.stocks:443 HTTP/1.1\r\n", HTTP1, true},
		{"an asterisk target is HTTP/1", "OPTIONS * HTTP/1.1\r\n", HTTP1, true},
		{"an absolute-form target is HTTP/1", "GET http://a/b HTTP/1.1\r\n", HTTP1, true},
		{"a UTF-8 path is HTTP/1", "GET /caf\xc3\xa9 HTTP/1.1\r\n", HTTP1, true},
		{"leading empty lines are skipped", "\r\n\r\nGET / HTTP/1.1\r\n", HTTP1, true},
		{"a request line cut in the method is not final", "GE", Opaque, false},
		{"a request line cut in the target is not final", "GET /very/long/pa", Opaque, false},
		{"a request line cut in the version is not final", "GET / HTT", Opaque, false},
		{"a request line cut before the minor version is not final", "GET / HTTP/1.", Opaque, false},
		{"HTTP/2.0 in a request line is not HTTP/1", "GET / HTTP/2.0\r\n", Opaque, true},
		{"HTTP/1.x needs a digit", "GET / HTTP/1.x\r\n", Opaque, true},
		{"a lower-case version is not HTTP", "GET / http/1.1\r\n", Opaque, true},
		{"two spaces after the method is not HTTP", "GET  / HTTP/1.1\r\n", Opaque, true},
		{"a control character in the target is not HTTP", "GET /\x01 HTTP/1.1\r\n", Opaque, true},
		{"a line ending after the target is not HTTP (HTTP/0.9 is not supported)", "GET /\r\n", Opaque, true},
		{"a redis inline command is opaque at once", "PING\r\n", Opaque, true},
		{"a memcached get is opaque at once", "get key\r\n", Opaque, true},
		{"a lower-case word is opaque at its first byte", "p", Opaque, true},
		{"a lower-case ping without a line end is opaque at once", "ping", Opaque, true},
		{"a lower-case method is opaque", "get / HTTP/1.1\r\n", Opaque, true},
		{"a method with a hyphen is HTTP/1", "VERSION-CONTROL /a HTTP/1.1\r\n", HTTP1, true},
		{"a method with another token character is opaque", "GET! / HTTP/1.1\r\n", Opaque, true},
		{"an overlong token is opaque", strings.Repeat("A", maxMethod+1), Opaque, true},
		{"a method-length token is not final", strings.Repeat("A", maxMethod), Opaque, false},
		{"a Postgres startup message is opaque at once", "\x00\x00\x00\x08\x04\xd2\x16\x2f", Opaque, true},
		{"a real TLS ClientHello is TLS", string(hello), TLS, true},
		{"a TLS record header with a ClientHello type is TLS", "\x16\x03\x01\x02\x00\x01", TLS, true},
		{"a TLS record header alone is not final", "\x16\x03\x01\x02\x00", Opaque, false},
		{"one handshake byte is not final", "\x16", Opaque, false},
		{"a TLS record of another handshake type is opaque", "\x16\x03\x03\x00\x10\x02", Opaque, true},
		{"a record version 2.x is opaque", "\x16\x02\x00", Opaque, true},
		{"a record version 3.5 is opaque", "\x16\x03\x05", Opaque, true},
		{"a zero-length record is opaque", "\x16\x03\x01\x00\x00", Opaque, true},
		{"an oversized record is opaque", "\x16\x03\x01\x40\x01", Opaque, true},
		{"a TLS application-data record is opaque", "\x17\x03\x03\x00\x10", Opaque, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, final := Classify([]byte(tt.in))
			if got != tt.want || final != tt.final {
				t.Errorf("Classify(%q) = %v, %v; want %v, %v", tt.in, got, final, tt.want, tt.final)
			}
		})
	}
}

func TestClassifyIsStableAsBytesArrive(t *testing.T) {
	inputs := []string{
		string(h2Preface) + "rest",
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"\r\nDELETE /a HTTP/1.0\r\n",
		string(clientHello(t, &tls.Config{ServerName: "a"})),
		"SSH-2.0-OpenSSH_9.6\r\n",
	}
	for _, in := range inputs {
		checkStable(t, []byte(in))
	}
}

// checkStable asserts what Sniff relies on: a non-final answer is Opaque, and once a prefix is
// final, every longer prefix gives the same answer.
func checkStable(t *testing.T, b []byte) {
	t.Helper()
	var decided bool
	var first Protocol
	for k := 0; k <= len(b); k++ {
		p, final := Classify(b[:k])
		if !final && p != Opaque {
			t.Fatalf("Classify(%q) = %v but not final", b[:k], p)
		}
		if decided && (!final || p != first) {
			t.Fatalf("Classify(%q) = %v, %v after Classify(shorter) was final with %v", b[:k], p, final, first)
		}
		if final && !decided {
			decided, first = true, p
		}
	}
}

// clientHello returns the first flight a crypto/tls client sends with cfg.
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c, s := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		cfg.InsecureSkipVerify = true
		tls.Client(c, cfg).Handshake() // fails when s closes; only the hello matters
	}()
	// Read the record header and then exactly the record.
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(s, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(s, body); err != nil {
		t.Fatal(err)
	}
	s.Close()
	<-done
	return append(hdr, body...)
}

func TestParseClientHello(t *testing.T) {
	tests := []struct {
		name       string
		cfg        *tls.Config
		serverName string
		alpn       []string
	}{
		{"a mesh client offers detour/h2", &tls.Config{ServerName: "stockdata.stocks.svc", NextProtos: []string{"detour/h2"}}, "stockdata.stocks.svc", []string{"detour/h2"}},
		{"a browser-like client offers h2 then http/1.1", &tls.Config{ServerName: "example.com", NextProtos: []string{"h2", "http/1.1"}}, "example.com", []string{"h2", "http/1.1"}},
		{"a client without ALPN", &tls.Config{ServerName: "a.b"}, "a.b", nil},
		{"a client dialling an IP sends no SNI", &tls.Config{ServerName: "10.0.0.1", NextProtos: []string{"x-custom"}}, "", []string{"x-custom"}},
		{"a TLS 1.2-only client", &tls.Config{ServerName: "old.example", MaxVersion: tls.VersionTLS12}, "old.example", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := clientHello(t, tt.cfg)
			h, err := ParseClientHello(b)
			if err != nil {
				t.Fatal(err)
			}
			if h.ServerName != tt.serverName || !equalStrings(h.ALPN, tt.alpn) {
				t.Errorf("got SNI %q ALPN %q, want %q %q", h.ServerName, h.ALPN, tt.serverName, tt.alpn)
			}
			for _, p := range tt.alpn {
				if !h.OffersALPN(p) {
					t.Errorf("OffersALPN(%q) = false", p)
				}
			}
			if h.OffersALPN("nope") {
				t.Error("OffersALPN(nope) = true")
			}
			// Every strict prefix is incomplete, never an error or a success.
			for k := 0; k < len(b); k++ {
				if _, err := ParseClientHello(b[:k]); err != ErrIncomplete {
					t.Fatalf("ParseClientHello(first %d of %d bytes) = %v, want ErrIncomplete", k, len(b), err)
				}
			}
		})
	}
}

func TestParseClientHelloReassemblesFragments(t *testing.T) {
	b := clientHello(t, &tls.Config{ServerName: "frag.example", NextProtos: []string{"detour/h2"}})
	msg := b[5:]
	for _, size := range []int{1, 7, 100, len(msg) - 1} {
		var rec []byte
		for off := 0; off < len(msg); off += size {
			frag := msg[off:min(off+size, len(msg))]
			rec = append(rec, 0x16, 0x03, 0x01, byte(len(frag)>>8), byte(len(frag)))
			rec = append(rec, frag...)
		}
		h, err := ParseClientHello(rec)
		if err != nil {
			t.Fatalf("fragments of %d: %v", size, err)
		}
		if h.ServerName != "frag.example" || !h.OffersALPN("detour/h2") {
			t.Errorf("fragments of %d: got %+v", size, h)
		}
		if _, err := ParseClientHello(rec[:len(rec)-1]); err != ErrIncomplete {
			t.Errorf("fragments of %d, last byte missing: %v, want ErrIncomplete", size, err)
		}
	}
}

func TestParseClientHelloRejects(t *testing.T) {
	good := clientHello(t, &tls.Config{ServerName: "a.b", NextProtos: []string{"h2"}})
	// hello builds a single-record ClientHello around body.
	hello := func(body []byte) []byte {
		msg := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
		return append([]byte{0x16, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
	}
	minimal := func(exts []byte) []byte {
		body := make([]byte, 34)              // version, random
		body = append(body, 0)                // session id
		body = append(body, 0, 2, 0x13, 0x01) // one cipher suite
		body = append(body, 1, 0)             // null compression
		if exts != nil {
			body = append(body, byte(len(exts)>>8), byte(len(exts)))
			body = append(body, exts...)
		}
		return hello(body)
	}
	ext := func(typ int, data ...byte) []byte {
		return append([]byte{byte(typ >> 8), byte(typ), byte(len(data) >> 8), byte(len(data))}, data...)
	}
	sni := ext(0, 0, 6, 0, 0, 3, 'a', '.', 'b')
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"an application-data record", append([]byte{0x17}, good[1:]...), "record type 23"},
		{"a zero-length record", []byte{0x16, 3, 1, 0, 0}, "record length 0"},
		{"a ServerHello", func() []byte { b := append([]byte(nil), good...); b[5] = 2; return b }(), "type 2 is not a ClientHello"},
		{"a hello without cipher suites", hello(append(make([]byte, 35), 0, 0, 1, 0)), "cipher suites"},
		{"a hello without compression methods", hello(append(make([]byte, 35), 0, 2, 0x13, 1, 0)), "compression methods"},
		{"extensions longer than the hello", minimal([]byte{0, 0, 0, 9}), "extension"},
		{"bytes after the extensions", hello(append(append(make([]byte, 35), 0, 2, 0x13, 1, 1, 0, 0, 0), 7)), "extensions"},
		{"two SNI extensions", minimal(append(append([]byte{}, sni...), sni...)), "repeated server_name"},
		{"an empty host name", minimal(ext(0, 0, 3, 0, 0, 0)), "server_name host_name"},
		{"two host names", minimal(ext(0, 0, 12, 0, 0, 3, 'a', '.', 'b', 0, 0, 3, 'c', '.', 'd')), "server_name host_name"},
		{"a host name with a NUL", minimal(ext(0, 0, 6, 0, 0, 3, 'a', 0, 'b')), "not printable ASCII"},
		{"an empty ALPN list", minimal(ext(16, 0, 0)), "ALPN protocol list"},
		{"an empty ALPN name", minimal(ext(16, 0, 1, 0)), "ALPN protocol name"},
		{"an ALPN name longer than its list", minimal(ext(16, 0, 2, 5, 'h')), "ALPN protocol name"},
		{"a handshake larger than 64 KiB", []byte{0x16, 3, 1, 0, 4, 1, 2, 0, 0}, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseClientHello(tt.in)
			if err == nil || err == ErrIncomplete || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseClientHello = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if h, err := ParseClientHello(minimal(nil)); err != nil || h.ServerName != "" || h.ALPN != nil {
		t.Errorf("a hello without extensions: %+v, %v; want an empty hello", h, err)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

var sinkProto Protocol

func BenchmarkClassifyHTTP1(b *testing.B) {
	in := []byte("GET /stockdata.v1.Quotes/Get HTTP/1.1\r\nHost: stockdata.stocks\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		sinkProto, _ = Classify(in)
	}
}

func BenchmarkClassifyHTTP2(b *testing.B) {
	in := append(bytes.Clone(h2Preface), 0, 0, 0, 4, 0, 0, 0, 0, 0)
	b.ReportAllocs()
	for b.Loop() {
		sinkProto, _ = Classify(in)
	}
}

func BenchmarkParseClientHello(b *testing.B) {
	in := clientHello(b, &tls.Config{ServerName: "stockdata.stocks", NextProtos: []string{"detour/h2"}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseClientHello(in); err != nil {
			b.Fatal(err)
		}
	}
}
