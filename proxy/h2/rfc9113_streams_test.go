package h2

import (
	"testing"

	"golang.org/x/net/http2"
)

// RFC 9113 §5: streams and multiplexing, as the engine's clients see them.

var body = grpcFrame([]byte("conformance"))

func TestRFC9113_5_1_StreamStates(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	// An upstream that answers before the request ends and then stops it with
	// RST_STREAM(NO_ERROR) (§8.1), so the engine closes the stream the same way while the client
	// may still be sending.
	early := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {
		sc.respondGRPC(f.StreamID, []byte("early"))
		sc.rst(f.StreamID, http2.ErrCodeNo)
	})
	earlyAddr, _, _ := startProxy(t, Config{Router: newRecorder(early.addr), Logger: discardLogger()})
	runConf(t, addr, []confCase{
		{"§5.1 idle: DATA on an idle stream is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.data(1, true, body)
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.1 idle: RST_STREAM on an idle stream is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeCancel) })
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.1 idle: WINDOW_UPDATE on an idle stream is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(1, 100) })
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.1 idle: WINDOW_UPDATE above the highest opened stream is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary)...)
			c.waitEnd(1)
			c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(3, 100) })
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.1 idle: CONTINUATION on an idle stream is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.write(func(fr *http2.Framer) error { return fr.WriteContinuation(1, true, c.block(getReq()...)) })
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.1 idle: PRIORITY on an idle stream is allowed and the stream opens later", func(c *confClient) {
			c.write(func(fr *http2.Framer) error {
				return fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 16})
			})
			c.wantIgnored(1)
			c.headers(1, true, grpcReq(mUnary)...)
			c.wantStatus(1, "200")
		}},
		{"§5.1 half-closed (remote): DATA after END_STREAM is a stream error STREAM_CLOSED", func(c *confClient) {
			c.headers(1, true, grpcReq(mWait)...)
			c.data(1, true, body)
			c.wantStreamError(1, http2.ErrCodeStreamClosed)
		}},
		{"§5.1 half-closed (remote): HEADERS after END_STREAM is a stream error STREAM_CLOSED", func(c *confClient) {
			c.headers(1, true, grpcReq(mWait)...)
			c.headers(1, true, "x-trailer", "late")
			c.wantStreamError(1, http2.ErrCodeStreamClosed)
		}},
		{"§5.1 half-closed (remote): WINDOW_UPDATE and PRIORITY are allowed", func(c *confClient) {
			c.headers(1, true, grpcReq(mWait)...)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteWindowUpdate(1, 1000); err != nil {
					return err
				}
				return fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 200})
			})
			c.wantIgnored(1)
		}},
		{"§5.1 closed after the client reset it: DATA is a stream error STREAM_CLOSED", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeCancel) })
			c.data(1, true, body)
			c.wantStreamError(1, http2.ErrCodeStreamClosed)
		}},
		{"§5.1 closed after the client reset it: HEADERS is a stream error STREAM_CLOSED", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeCancel) })
			c.headers(1, true, "x-trailer", "late")
			c.wantStreamError(1, http2.ErrCodeStreamClosed)
		}},
		{"§5.1 closed after the client reset it: PRIORITY is ignored, and RST_STREAM gets no RST_STREAM back (§5.4.2)", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
					return err
				}
				if err := fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 1}); err != nil {
					return err
				}
				return fr.WriteRSTStream(1, http2.ErrCodeCancel)
			})
			c.wantIgnored(1)
		}},
		{"§5.1 closed after both sides ended: DATA is a stream error STREAM_CLOSED", func(c *confClient) {
			c.headers(1, false, grpcReq(mUnary)...)
			c.data(1, true, body)
			c.waitEnd(1)
			c.data(1, true, body)
			c.wantStreamError(1, http2.ErrCodeStreamClosed)
		}},
		{"§5.1 closed after both sides ended: HEADERS is a stream error STREAM_CLOSED", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary)...)
			c.waitEnd(1)
			c.headers(1, true, grpcReq(mUnary)...)
			c.wantStreamError(1, http2.ErrCodeStreamClosed)
		}},
		{"§5.1 closed after both sides ended: WINDOW_UPDATE, PRIORITY and RST_STREAM are ignored", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary)...)
			c.waitEnd(1)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteWindowUpdate(1, 10); err != nil {
					return err
				}
				if err := fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 1}); err != nil {
					return err
				}
				return fr.WriteRSTStream(1, http2.ErrCodeCancel)
			})
			c.wantIgnored(1)
		}},
		{"§5.1 closed by the engine's RST_STREAM: DATA and trailers in flight are discarded", func(c *confClient) {
			c.headers(1, false, grpcReq(mUnary, "X-Upper", "malformed")...)
			c.wantStreamError(1, http2.ErrCodeProtocol)
			c.data(1, false, body)
			c.headers(1, true, "x-trailer", "in flight")
			c.wantIgnored(1)
			// The DATA still counted toward the connection window (§6.9), and HPACK stayed in
			// sync: the next request is served.
			c.headers(3, true, grpcReq(mUnary)...)
			c.wantStatus(3, "200")
		}},
	})
	runConf(t, earlyAddr, []confCase{
		{"§5.1 closed by the engine's RST_STREAM(NO_ERROR) after a complete response: the rest of the request is discarded", func(c *confClient) {
			c.headers(1, false, grpcReq(mUnary)...)
			c.wantStreamError(1, http2.ErrCodeNo)
			c.data(1, false, body)
			c.headers(1, true, "x-trailer", "in flight")
			c.wantIgnored(1)
		}},
	})
}

func TestRFC9113_5_1_1_StreamIdentifiers(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§5.1.1 a client stream with an even identifier is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(2, true, grpcReq(mUnary)...)
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.1.1 a new stream identifier lower than one already opened is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(5, true, grpcReq(mWait)...)
			c.headers(3, true, grpcReq(mUnary)...)
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.1.1 a stream identifier skipped at the start cannot be opened later", func(c *confClient) {
			c.headers(3, true, grpcReq(mUnary)...)
			c.wantStatus(3, "200")
			c.headers(1, true, grpcReq(mUnary)...)
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.1.1 identifiers may skip: a higher identifier opens a stream", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary)...)
			c.wantStatus(1, "200")
			c.headers(101, true, grpcReq(mUnary)...)
			c.wantStatus(101, "200")
		}},
		{"§5.1.1 a skipped stream is closed: DATA on it is a stream error STREAM_CLOSED (§6.1)", func(c *confClient) {
			c.headers(5, true, grpcReq(mWait)...)
			c.data(3, true, body)
			c.wantStreamError(3, http2.ErrCodeStreamClosed)
		}},
		{"§5.1.1 a GOAWAY for a connection error names the last stream the engine received (§5.4.1)", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary)...)
			c.waitEnd(1)
			c.headers(3, true, grpcReq(mWait)...)
			c.raw(http2.FrameData, 0, 0, body) // §6.1: a connection error
			if g := c.wantConnError(http2.ErrCodeProtocol); g.LastStreamID != 3 {
				c.t.Fatalf("GOAWAY last stream %d, want 3", g.LastStreamID)
			}
		}},
	})
}

func TestRFC9113_5_1_2_StreamConcurrency(t *testing.T) {
	addr, _, _ := confProxy(t, Config{MaxConcurrentStreams: 2})
	runConf(t, addr, []confCase{
		{"§5.1.2 a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is refused with REFUSED_STREAM", func(c *confClient) {
			c.headers(1, true, grpcReq(mWait)...)
			c.headers(3, true, grpcReq(mWait)...)
			c.headers(5, true, grpcReq(mUnary)...)
			c.wantStreamError(5, http2.ErrCodeRefusedStream)
		}},
		{"§5.1.2 the body of a refused stream, in flight, is discarded", func(c *confClient) {
			c.headers(1, true, grpcReq(mWait)...)
			c.headers(3, true, grpcReq(mWait)...)
			c.headers(5, false, grpcReq(mUnary)...)
			c.wantStreamError(5, http2.ErrCodeRefusedStream)
			c.data(5, true, body)
			c.wantIgnored(5)
		}},
		{"§5.1.2 streams that closed no longer count toward the limit", func(c *confClient) {
			c.headers(1, true, grpcReq(mWait)...)
			c.headers(3, true, grpcReq(mUnary)...)
			c.waitEnd(3)
			c.headers(5, true, grpcReq(mUnary)...)
			c.wantStatus(5, "200")
		}},
	})
}

func TestRFC9113_5_3_1_StreamDependencies(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§5.3.1 HEADERS making a new stream depend on itself is a stream error PROTOCOL_ERROR", func(c *confClient) {
			c.write(func(fr *http2.Framer) error {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block(grpcReq(mUnary)...),
					EndStream: true, EndHeaders: true, Priority: http2.PriorityParam{StreamDep: 1, Weight: 16}})
			})
			c.wantStreamError(1, http2.ErrCodeProtocol)
			c.headers(3, true, grpcReq(mUnary)...)
			c.wantStatus(3, "200")
		}},
		{"§5.3.1 PRIORITY making an idle stream depend on itself is a PROTOCOL_ERROR of the connection: no RST_STREAM on an idle stream (§6.4, §5.4.1)", func(c *confClient) {
			c.write(func(fr *http2.Framer) error {
				return fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 16})
			})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§5.3.1 a dependency on another stream is accepted", func(c *confClient) {
			c.headers(1, true, grpcReq(mWait)...)
			c.write(func(fr *http2.Framer) error {
				return fr.WritePriority(3, http2.PriorityParam{StreamDep: 1, Exclusive: true, Weight: 16})
			})
			c.wantIgnored(1, 3)
			c.headers(3, true, grpcReq(mUnary)...)
			c.wantStatus(3, "200")
		}},
	})
	t.Run("§5.3.1 PRIORITY making an open stream depend on itself is a stream error PROTOCOL_ERROR that cancels the upstream call", func(t *testing.T) {
		addr, _, rec := confProxy(t, Config{})
		c := dialConf(t, addr)
		c.headers(1, true, grpcReq(mWait)...)
		waitFor(t, "the stream to be routed", func() bool {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			return len(rec.heads) > 0
		})
		c.write(func(fr *http2.Framer) error {
			return fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 16})
		})
		c.wantStreamError(1, http2.ErrCodeProtocol)
		if res := rec.waitResult(t); res.ResetCode != http2.ErrCodeProtocol || res.Err == nil {
			t.Errorf("Result = %+v, want the stream ended by PROTOCOL_ERROR", res)
		}
	})
}

func TestRFC9113_5_4_ErrorHandling(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§5.4.2 a stream error leaves the connection's other streams working", func(c *confClient) {
			c.headers(1, true, grpcReq(mWait)...)
			c.headers(3, true, grpcReq(mUnary, "X-Upper", "malformed")...)
			c.wantStreamError(3, http2.ErrCodeProtocol)
			c.headers(5, true, grpcReq(mUnary)...)
			c.wantStatus(5, "200")
			c.wantIgnored(1)
		}},
	})
}
