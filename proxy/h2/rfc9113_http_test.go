package h2

import (
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// RFC 9113 §8: HTTP semantics. Requests the client sends and responses the upstream sends are
// held to the same rules: an intermediary MUST NOT forward a malformed message (§8.1.1).

func TestRFC9113_8_1_Messages(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§8.1 a second HEADERS without END_STREAM is malformed: stream error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.data(1, false, body)
			c.headers(1, false, "x-trailer", "not the end")
			c.wantStreamError(1, http2.ErrCodeProtocol)
		}},
		{"§8.1 trailers carrying a pseudo-header are malformed: stream error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.data(1, false, body)
			c.headers(1, true, ":path", "/again")
			c.wantStreamError(1, http2.ErrCodeProtocol)
		}},
	})
	t.Run("§8.1 request trailers end the request and reach the upstream", func(t *testing.T) {
		trailers := make(chan *http2.MetaHeadersFrame, 1)
		ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
			if fieldValue(f, ":method") == "" {
				trailers <- f
				sc.respondGRPC(f.StreamID, []byte("ok"))
			}
		})
		addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), Logger: discardLogger()})
		c := dialConf(t, addr)
		c.headers(1, false, grpcReq(mUnary)...)
		c.data(1, false, body)
		c.headers(1, true, "x-trailer", "v")
		c.wantStatus(1, "200")
		select {
		case f := <-trailers:
			if !f.StreamEnded() || fieldValue(f, "x-trailer") != "v" {
				t.Fatalf("the upstream got trailers %v end=%v", f.Fields, f.StreamEnded())
			}
		case <-time.After(confWait):
			t.Fatal("the trailers did not reach the upstream")
		}
	})
}

// TestRFC9113_8_1_1_ContentLength: a content-length that does not equal the sum of the DATA
// payloads makes the request malformed: the client's stream is reset with PROTOCOL_ERROR and
// the upstream stream, already open, is cancelled before it sees the end of a body that lies
// about its length (the H2.CL request-smuggling shape once a hop speaks HTTP/1).
func TestRFC9113_8_1_1_ContentLength(t *testing.T) {
	ends := make(chan uint32, 16)
	opened := make(chan uint32, 16)
	ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		opened <- f.StreamID
		if f.StreamEnded() {
			ends <- f.StreamID
		}
	})
	ru.onData = func(sc *rawServerConn, f *http2.DataFrame) {
		if f.StreamEnded() {
			ends <- f.StreamID
		}
	}
	rsts := upstreamRST(ru)
	rawAddr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), Logger: discardLogger()})
	cl := func(n int) string { return strconv.Itoa(n) }
	bad := []struct {
		name string
		head []string
		end  bool
		// rest, if set, sends the body once the upstream has the request's HEADERS.
		rest func(c *confClient)
	}{
		{"§8.1.1 a body shorter than content-length is malformed: stream error PROTOCOL_ERROR, the upstream stream cancelled",
			grpcReq(mUnary, "content-length", cl(len(body)+1)), false, func(c *confClient) {
				c.data(1, true, body)
			}},
		{"§8.1.1 a body longer than content-length is malformed: stream error PROTOCOL_ERROR, the upstream stream cancelled",
			grpcReq(mUnary, "content-length", cl(len(body)-1)), false, func(c *confClient) {
				c.data(1, false, body)
			}},
		{"§8.1.1 a body that outgrows content-length over several DATA frames is malformed",
			grpcReq(mUnary, "content-length", cl(len(body)+3)), false, func(c *confClient) {
				c.data(1, false, body[:4])
				c.data(1, false, body[4:])
				c.data(1, true, []byte("1234"))
			}},
		{"§8.1.1 a body ended by trailers short of content-length is malformed",
			grpcReq(mUnary, "content-length", cl(len(body)*2)), false, func(c *confClient) {
				c.data(1, false, body)
				c.headers(1, true, "x-trailer", "v")
			}},
		{"§8.1.1 a content-length above 0 on a request without a body is malformed",
			grpcReq(mUnary, "content-length", "5"), true, nil},
		{"§8.1.1 a content-length that is not a number is malformed",
			grpcReq(mUnary, "content-length", "12a"), true, nil},
		{"§8.1.1 two different content-length values are malformed",
			grpcReq(mUnary, "content-length", "0", "content-length", "7"), true, nil},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c := dialConf(t, rawAddr)
			c.headers(1, tc.end, tc.head...)
			if tc.rest != nil {
				select {
				case <-opened:
				case <-time.After(confWait):
					t.Fatal("the request did not reach the upstream")
				}
				tc.rest(c)
			}
			c.wantStreamError(1, http2.ErrCodeProtocol)
			if tc.rest != nil {
				wantUpstreamRST(t, rsts, http2.ErrCodeCancel)
			}
			select {
			case id := <-ends:
				t.Fatalf("the upstream saw the end of request stream %d", id)
			case id := <-opened:
				t.Fatalf("a malformed request reached the upstream (its stream %d)", id)
			default:
			}
		})
	}
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§8.1.1 a content-length equal to the sum of the DATA payloads is served", func(c *confClient) {
			c.headers(1, false, grpcReq(mUnary, "content-length", cl(len(body)))...)
			c.data(1, false, body[:3])
			c.data(1, false, nil)
			c.data(1, true, body[3:])
			c.wantStatus(1, "200")
			if got := c.respBody(1); string(got) != string(body) {
				c.t.Fatalf("echoed %q", got)
			}
		}},
		{"§8.1.1 content-length 0 on a request without a body is served", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary, "content-length", "0")...)
			c.wantStatus(1, "200")
		}},
		{"§8.1.1 repeated equal content-length values are one value", func(c *confClient) {
			c.headers(1, false, grpcReq(mUnary, "content-length", cl(len(body)), "content-length", cl(len(body)))...)
			c.data(1, true, body)
			c.wantStatus(1, "200")
		}},
	})
}

func TestRFC9113_8_2_1_FieldValidity(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	var cases []confCase
	for _, m := range []struct{ name, k, v string }{
		{"an uppercase field name", "X-Upper", "v"},
		{"an empty field name", "", "v"},
		{"a colon in a regular field name", "x:y", "v"},
		{"a space in a field name", "x y", "v"},
		{"NUL in a value", "x-a", "a\x00b"},
		{"CR in a value", "x-a", "a\rb"},
		{"LF in a value", "x-a", "a\nb"},
		{"a value starting with a space", "x-a", " a"},
		{"a value ending with a tab", "x-a", "a\t"},
	} {
		cases = append(cases, confCase{"§8.2.1 " + m.name + " makes a request malformed: stream error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary, m.k, m.v)...)
			c.wantStreamError(1, http2.ErrCodeProtocol)
		}})
	}
	cases = append(cases, confCase{"§8.2.1 whitespace inside a value is valid", func(c *confClient) {
		c.headers(1, true, grpcReq(mUnary, "x-a", "a \t b")...)
		c.wantStatus(1, "200")
	}})
	runConf(t, addr, cases)
}

func TestRFC9113_8_2_2_ConnectionSpecificFields(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	var cases []confCase
	for _, f := range [][2]string{
		{"connection", "keep-alive"}, {"keep-alive", "timeout=5"}, {"proxy-connection", "keep-alive"},
		{"transfer-encoding", "chunked"}, {"upgrade", "h2c"}, {"te", "gzip"}, {"te", "trailers, gzip"},
	} {
		cases = append(cases, confCase{"§8.2.2 a request with " + f[0] + ": " + f[1] + " is malformed: stream error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary, f[0], f[1])...)
			c.wantStreamError(1, http2.ErrCodeProtocol)
		}})
	}
	cases = append(cases,
		confCase{"§8.2.2 request trailers with a connection-specific field are malformed", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.headers(1, true, "transfer-encoding", "chunked")
			c.wantStreamError(1, http2.ErrCodeProtocol)
		}},
		confCase{"§8.2.2 te: trailers is the one TE a request may carry", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary)...) // grpcReq sends te: trailers
			c.wantStatus(1, "200")
		}},
	)
	runConf(t, addr, cases)
}

func TestRFC9113_8_3_1_RequestPseudoHeaders(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	malformed := []struct {
		name string
		kv   []string
	}{
		{"a duplicate :path", []string{":method", "GET", ":scheme", "http", ":path", "/", ":path", "/", ":authority", "a"}},
		{"a missing :scheme", []string{":method", "GET", ":path", "/", ":authority", "a"}},
		{"a missing :path", []string{":method", "GET", ":scheme", "http", ":authority", "a"}},
		{"an empty :path", []string{":method", "GET", ":scheme", "http", ":path", "", ":authority", "a"}},
		{"a missing :method", []string{":scheme", "http", ":path", "/", ":authority", "a"}},
		{"an unknown pseudo-header", []string{":method", "GET", ":scheme", "http", ":path", "/", ":custom", "x"}},
		{"a response pseudo-header", []string{":method", "GET", ":scheme", "http", ":path", "/", ":status", "200"}},
		{"an uppercase pseudo-header", []string{":method", "GET", ":scheme", "http", ":Path", "/"}},
		{"a pseudo-header after a regular field", []string{":method", "GET", ":scheme", "http", "x-a", "b", ":path", "/"}},
		{"a CONNECT with :path", []string{":method", "CONNECT", ":authority", "example.com:443", ":path", "/"}},
		{"a CONNECT with :scheme", []string{":method", "CONNECT", ":authority", "example.com:443", ":scheme", "https"}},
		{"a CONNECT without :authority", []string{":method", "CONNECT"}},
		{"a host field that differs from :authority", getReq("host", "other.test")},
	}
	var cases []confCase
	for _, m := range malformed {
		cases = append(cases, confCase{"§8.3.1 " + m.name + " makes a request malformed: stream error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, true, m.kv...)
			c.wantStreamError(1, http2.ErrCodeProtocol)
		}})
	}
	cases = append(cases,
		confCase{"§8.3.1 a host field equal to :authority is valid", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary, "host", "SVC.test")...)
			c.wantStatus(1, "200")
		}},
		confCase{"§8.3.1 a request without :authority takes the host field", func(c *confClient) {
			c.headers(1, true, ":method", "POST", ":scheme", "http", ":path", mUnary, "host", "svc.test", "content-type", "application/grpc")
			c.wantStatus(1, "200")
		}},
		confCase{"§8.5 a well-formed CONNECT is refused with 405: the proxy does not tunnel", func(c *confClient) {
			c.headers(1, false, ":method", "CONNECT", ":authority", "example.com:443")
			c.wantStatus(1, "405")
		}},
	)
	runConf(t, addr, cases)
}

// upRaw writes a raw frame from a scripted upstream.
func upRaw(sc *rawServerConn, typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.fr.WriteRawFrame(typ, flags, id, payload)
}

// upBlock encodes a header block with the upstream connection's encoder.
func upBlock(sc *rawServerConn, kv ...string) []byte {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.encBuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		sc.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), sc.encBuf.Bytes()...)
}

// TestRFC9113_UpstreamResponses holds what upstreams send to the same rules as requests: a
// malformed response is not forwarded (§8.1.1); the client gets 502 (gRPC: INTERNAL) or, once
// the response is under way, an error end of its stream, and the upstream stream is reset with
// PROTOCOL_ERROR. Connection errors close the upstream connection with GOAWAY and fail only its
// streams.
func TestRFC9113_UpstreamResponses(t *testing.T) {
	type script func(sc *rawServerConn, id uint32)
	type answer int
	const (
		got502      answer = iota // the client gets 502 and the upstream RST_STREAM PROTOCOL_ERROR
		gotReset                  // the client gets the response head, then RST_STREAM INTERNAL_ERROR
		gotGRPC13                 // a gRPC client gets grpc-status 13 in trailers
		gotGoAway                 // the upstream gets GOAWAY PROTOCOL_ERROR; the client 502
		forwarded                 // the response is forwarded as is
		streamClose               // the upstream gets RST_STREAM STREAM_CLOSED
	)
	head := func(sc *rawServerConn, id uint32, end bool, kv ...string) {
		sc.headers(id, end, append([]string{":status", "200"}, kv...)...)
	}
	cases := []struct {
		name   string
		grpc   bool
		method string
		up     script
		want   answer
		status string
	}{
		{name: "§8.2.2 a response with connection: close is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "connection", "close")
		}, want: got502},
		{name: "§8.2.2 a response with keep-alive is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "keep-alive", "timeout=5")
		}, want: got502},
		{name: "§8.2.2 a response with proxy-connection is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "proxy-connection", "close")
		}, want: got502},
		{name: "§8.2.2 a response with transfer-encoding is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, false, "transfer-encoding", "chunked")
			sc.data(id, true, []byte("5\r\nhello\r\n0\r\n\r\n"))
		}, want: got502},
		{name: "§8.2.2 a response with upgrade is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "upgrade", "websocket")
		}, want: got502},
		{name: "§8.2.2 a response with te other than trailers is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "te", "gzip")
		}, want: got502},
		{name: "§8.2.2 a gRPC response with a connection-specific field is answered grpc-status INTERNAL", grpc: true, up: func(sc *rawServerConn, id uint32) {
			head(sc, id, false, "content-type", "application/grpc", "connection", "close")
			sc.data(id, false, grpcFrame([]byte("x")))
			sc.headers(id, true, "grpc-status", "0")
		}, want: gotGRPC13},
		{name: "§8.2.2 response trailers with a connection-specific field are malformed", grpc: true, up: func(sc *rawServerConn, id uint32) {
			head(sc, id, false, "content-type", "application/grpc")
			sc.data(id, false, grpcFrame([]byte("x")))
			sc.headers(id, true, "grpc-status", "0", "transfer-encoding", "chunked")
		}, want: gotGRPC13},
		{name: "§8.2.1 a response field value with trailing whitespace is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "x-a", "v ")
		}, want: got502},
		{name: "§8.1.1 a response body shorter than content-length is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, false, "content-length", "10")
			sc.data(id, true, []byte("short"))
		}, want: gotReset},
		{name: "§8.1.1 a response body longer than content-length is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, false, "content-length", "2")
			sc.data(id, true, []byte("longer"))
		}, want: gotReset},
		{name: "§8.1.1 response trailers short of content-length are malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, false, "content-length", "10")
			sc.data(id, false, []byte("short"))
			sc.headers(id, true, "x-t", "1")
		}, want: gotReset},
		{name: "§8.1.1 a response with content-length above 0 and END_STREAM on its HEADERS is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "content-length", "10")
		}, want: got502},
		{name: "§8.1.1 a response with an invalid content-length is malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "content-length", "-1")
		}, want: got502},
		{name: "§8.1.1 a response whose content-length matches its body is forwarded", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, false, "content-length", "5")
			sc.data(id, false, []byte("he"))
			sc.data(id, true, []byte("llo"))
		}, want: forwarded, status: "200"},
		{name: "§8.1.1 a 204 response may carry content-length without content", up: func(sc *rawServerConn, id uint32) {
			sc.headers(id, true, ":status", "204", "content-length", "10")
		}, want: forwarded, status: "204"},
		{name: "§8.1.1 a 304 response may carry content-length without content", up: func(sc *rawServerConn, id uint32) {
			sc.headers(id, true, ":status", "304", "content-length", "10")
		}, want: forwarded, status: "304"},
		{name: "§8.1.1 a response to HEAD may carry content-length without content", method: "HEAD", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true, "content-length", "10")
		}, want: forwarded, status: "200"},
		{name: "§8.1.1 content in a 204 response is malformed", up: func(sc *rawServerConn, id uint32) {
			sc.headers(id, false, ":status", "204")
			sc.data(id, true, []byte("body"))
		}, want: gotReset, status: "204"},
		{name: "§8.3.2 a response without :status is malformed", up: func(sc *rawServerConn, id uint32) {
			sc.headers(id, true, "x-a", "b")
		}, want: got502},
		{name: "§8.3.2 a response with a request pseudo-header is malformed", up: func(sc *rawServerConn, id uint32) {
			sc.headers(id, true, ":status", "200", ":path", "/")
		}, want: got502},
		{name: "§8.1 response HEADERS after the final response without END_STREAM are malformed", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, false)
			sc.headers(id, false, "x-t", "1")
		}, want: gotReset},
		{name: "§5.3.1 a response stream made to depend on itself is a stream error PROTOCOL_ERROR", up: func(sc *rawServerConn, id uint32) {
			sc.mu.Lock()
			sc.fr.WritePriority(id, http2.PriorityParam{StreamDep: id, Weight: 1})
			sc.mu.Unlock()
		}, want: got502},
		{name: "§6.9 WINDOW_UPDATE with increment 0 on a stream is a stream error PROTOCOL_ERROR", up: func(sc *rawServerConn, id uint32) {
			upRaw(sc, http2.FrameWindowUpdate, 0, id, []byte{0, 0, 0, 0})
		}, want: got502},
		{name: "§5.1 DATA from the upstream on an idle stream is a connection error PROTOCOL_ERROR", up: func(sc *rawServerConn, id uint32) {
			sc.data(id+2, true, []byte("x"))
		}, want: gotGoAway},
		{name: "§5.1 HEADERS from the upstream on a stream it was never given (even) is a connection error PROTOCOL_ERROR", up: func(sc *rawServerConn, id uint32) {
			sc.headers(id+1, true, ":status", "200")
		}, want: gotGoAway},
		{name: "§5.1 RST_STREAM from the upstream on an idle stream is a connection error PROTOCOL_ERROR", up: func(sc *rawServerConn, id uint32) {
			sc.rst(id+2, http2.ErrCodeCancel)
		}, want: gotGoAway},
		{name: "§5.1 WINDOW_UPDATE from the upstream on an idle stream is a connection error PROTOCOL_ERROR", up: func(sc *rawServerConn, id uint32) {
			sc.mu.Lock()
			sc.fr.WriteWindowUpdate(id+2, 10)
			sc.mu.Unlock()
		}, want: gotGoAway},
		{name: "§6.2 response HEADERS whose pad length is not less than its payload is a connection error PROTOCOL_ERROR", up: func(sc *rawServerConn, id uint32) {
			blk := upBlock(sc, ":status", "200")
			upRaw(sc, http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream|http2.FlagHeadersPadded, id, append([]byte{byte(len(blk) + 1)}, blk...))
		}, want: gotGoAway},
		{name: "§5.1 DATA after the upstream's END_STREAM is a stream error STREAM_CLOSED", up: func(sc *rawServerConn, id uint32) {
			head(sc, id, true)
			sc.data(id, true, []byte("late"))
		}, want: streamClose, status: "200"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
				tc.up(sc, f.StreamID)
			})
			rsts := upstreamRST(ru)
			goaways := make(chan http2.ErrCode, 4)
			ru.onGoAway = func(sc *rawServerConn, f *http2.GoAwayFrame) { goaways <- f.ErrCode }
			addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), Logger: discardLogger()})
			c := dialConf(t, addr)
			switch {
			case tc.grpc:
				c.headers(1, true, grpcReq(mUnary)...)
			case tc.method != "":
				c.headers(1, true, ":method", tc.method, ":scheme", "http", ":authority", "svc.test", ":path", "/")
			default:
				// The request stays open, so the stream outlives the response's END_STREAM.
				c.headers(1, tc.want != streamClose, getReq()...)
			}
			switch tc.want {
			case got502:
				c.wantStatus(1, "502")
				wantUpstreamRST(t, rsts, http2.ErrCodeProtocol)
			case gotReset:
				st := tc.status
				if st == "" {
					st = "200"
				}
				c.wantStatus(1, st)
				c.wantStreamError(1, http2.ErrCodeInternal)
				wantUpstreamRST(t, rsts, http2.ErrCodeProtocol)
			case gotGRPC13:
				h := c.response(1)
				for !h.StreamEnded() {
					h = c.response(1)
				}
				if got := fieldValue(h, "grpc-status"); got != "13" {
					t.Fatalf("grpc-status %q, want 13 (INTERNAL)", got)
				}
				wantUpstreamRST(t, rsts, http2.ErrCodeProtocol)
			case gotGoAway:
				c.wantStatus(1, "502")
				select {
				case code := <-goaways:
					if code != http2.ErrCodeProtocol {
						t.Fatalf("the upstream got GOAWAY %v, want PROTOCOL_ERROR", code)
					}
				case <-time.After(confWait):
					t.Fatal("the upstream got no GOAWAY")
				}
			case forwarded:
				h := c.wantStatus(1, tc.status)
				if cl := fieldValue(h, "content-length"); cl == "" && tc.status != "200" {
					t.Errorf("content-length was not forwarded")
				}
				if !h.StreamEnded() {
					c.respBody(1)
				}
				c.alive()
			case streamClose:
				c.wantStatus(1, tc.status)
				wantUpstreamRST(t, rsts, http2.ErrCodeStreamClosed)
			}
		})
	}
}
