package h2

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/net/http2"
)

// RFC 9113 §3 to §6: the connection preface, framing, and each frame type's rules.

func TestRFC9113_3_4_ConnectionPreface(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	for _, tc := range []confCase{
		{"§3.4 a first frame other than SETTINGS is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{1}) })
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§3.4 a SETTINGS ACK as the first frame is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			c.wantConnError(http2.ErrCodeProtocol)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(dialBare(t, addr)) })
	}
}

func TestRFC9113_4_Framing(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§4.1 a frame of an unknown type is ignored (§5.5)", func(c *confClient) {
			c.raw(0xfa, 0, 0, []byte("extension"))
			c.raw(0xfa, 0xff, 1, []byte("extension"))
			c.wantIgnored(1)
			c.headers(1, true, grpcReq(mUnary)...)
			c.wantStatus(1, "200")
		}},
		{"§4.1 unknown flags are ignored", func(c *confClient) {
			c.write(func(fr *http2.Framer) error {
				return fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream|0x40, 1, c.block(grpcReq(mUnary)...))
			})
			c.wantStatus(1, "200")
		}},
		{"§4.2 a frame larger than SETTINGS_MAX_FRAME_SIZE is a connection error FRAME_SIZE_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.raw(http2.FrameData, 0, 1, make([]byte, 16385))
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§4.3 a header block that does not decode is a connection error COMPRESSION_ERROR", func(c *confClient) {
			c.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, 1, []byte{0xff, 0xff, 0xff, 0xff, 0xff})
			c.wantConnError(http2.ErrCodeCompression)
		}},
		{"§5.5 a frame of an unknown type inside a header block is a connection error PROTOCOL_ERROR", func(c *confClient) {
			blk := c.block(grpcReq(mUnary)...)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:4], EndStream: true}); err != nil {
					return err
				}
				if err := fr.WriteRawFrame(0xfa, 0, 1, nil); err != nil {
					return err
				}
				return fr.WriteContinuation(1, true, blk[4:])
			})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
	})
}

func TestRFC9113_6_1_DATA(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§6.1 DATA on stream 0 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameData, 0, 0, body)
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.1 DATA whose pad length is not less than its payload is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.raw(http2.FrameData, http2.FlagDataPadded, 1, []byte{3, 'a', 'b'})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.1 padded DATA too short to hold its pad length is a connection error FRAME_SIZE_ERROR (§4.2)", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.raw(http2.FrameData, http2.FlagDataPadded, 1, nil)
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.1 padding is removed: the upstream receives the content only", func(c *confClient) {
			msg := grpcFrame([]byte("padded body"))
			c.headers(1, false, grpcReq(mUnary)...)
			c.write(func(fr *http2.Framer) error { return fr.WriteDataPadded(1, true, msg, make([]byte, 40)) })
			c.wantStatus(1, "200")
			if got := c.respBody(1); !bytes.Equal(got, msg) {
				c.t.Fatalf("echoed %q, want %q", got, msg)
			}
		}},
		{"§6.1 DATA on a stream that is not open is a stream error STREAM_CLOSED", func(c *confClient) {
			c.headers(1, true, grpcReq(mUnary)...)
			c.waitEnd(1)
			c.data(1, false, body)
			c.wantStreamError(1, http2.ErrCodeStreamClosed)
		}},
	})
}

func TestRFC9113_6_2_HEADERS(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§6.2 HEADERS on stream 0 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, 0, c.block(grpcReq(mUnary)...))
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.2 HEADERS whose pad length is not less than its payload is a connection error PROTOCOL_ERROR", func(c *confClient) {
			blk := c.block(grpcReq(mUnary)...)
			p := append([]byte{byte(len(blk) + 1)}, blk...)
			c.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream|http2.FlagHeadersPadded, 1, p)
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.2 padded HEADERS too short to hold its pad length is a connection error FRAME_SIZE_ERROR (§4.2)", func(c *confClient) {
			c.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPadded, 1, nil)
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.2 HEADERS with the PRIORITY flag too short for its fields is a connection error FRAME_SIZE_ERROR (§4.2)", func(c *confClient) {
			c.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPriority, 1, []byte{0, 0, 0})
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.2 HEADERS with padding and a priority is served", func(c *confClient) {
			c.write(func(fr *http2.Framer) error {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block(grpcReq(mUnary)...),
					EndStream: true, EndHeaders: true, PadLength: 20, Priority: http2.PriorityParam{StreamDep: 0, Weight: 32}})
			})
			c.wantStatus(1, "200")
		}},
	})
}

func TestRFC9113_6_3_PRIORITY(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§6.3 PRIORITY on stream 0 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FramePriority, 0, 0, []byte{0, 0, 0, 1, 16})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.3 PRIORITY of a length other than 5 is a FRAME_SIZE_ERROR (here the connection's, §5.4.1)", func(c *confClient) {
			c.raw(http2.FramePriority, 0, 1, []byte{0, 0, 0, 0})
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.3 PRIORITY inside a header block is a connection error PROTOCOL_ERROR (§6.10)", func(c *confClient) {
			blk := c.block(grpcReq(mUnary)...)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:4], EndStream: true}); err != nil {
					return err
				}
				return fr.WritePriority(1, http2.PriorityParam{Weight: 1})
			})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
	})
}

func TestRFC9113_6_4_RST_STREAM(t *testing.T) {
	addr, _, rec := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§6.4 RST_STREAM on stream 0 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameRSTStream, 0, 0, []byte{0, 0, 0, 8})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.4 RST_STREAM of a length other than 4 is a connection error FRAME_SIZE_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.raw(http2.FrameRSTStream, 0, 1, []byte{0, 0, 8})
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.4 RST_STREAM ends the stream and cancels the upstream call", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			waitFor(c.t, "the stream to be routed", func() bool {
				rec.mu.Lock()
				defer rec.mu.Unlock()
				return len(rec.heads) > 0
			})
			c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeCancel) })
			c.wantIgnored(1)
			if res := rec.waitResult(c.t); res.ResetCode != http2.ErrCodeCancel {
				c.t.Errorf("Result = %+v, want the client's CANCEL", res)
			}
		}},
	})
}

func TestRFC9113_6_5_SETTINGS(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	setting := func(id http2.SettingID, v uint32) []byte {
		return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(nil, uint16(id)), v)
	}
	runConf(t, addr, []confCase{
		{"§6.5 SETTINGS on a stream other than 0 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameSettings, 0, 1, nil)
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.5 SETTINGS of a length not a multiple of 6 is a connection error FRAME_SIZE_ERROR", func(c *confClient) {
			c.raw(http2.FrameSettings, 0, 0, []byte{0, 3, 0, 0})
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.5 a SETTINGS ACK with a payload is a connection error FRAME_SIZE_ERROR", func(c *confClient) {
			c.raw(http2.FrameSettings, http2.FlagSettingsAck, 0, setting(http2.SettingMaxConcurrentStreams, 1))
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.5.2 SETTINGS_ENABLE_PUSH other than 0 or 1 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameSettings, 0, 0, setting(http2.SettingEnablePush, 2))
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.5.2 SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 is a connection error FLOW_CONTROL_ERROR", func(c *confClient) {
			c.raw(http2.FrameSettings, 0, 0, setting(http2.SettingInitialWindowSize, 1<<31))
			c.wantConnError(http2.ErrCodeFlowControl)
		}},
		{"§6.5.2 SETTINGS_MAX_FRAME_SIZE below 16384 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameSettings, 0, 0, setting(http2.SettingMaxFrameSize, 16383))
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.5.2 SETTINGS_MAX_FRAME_SIZE above 2^24-1 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameSettings, 0, 0, setting(http2.SettingMaxFrameSize, 1<<24))
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.5.2 an unknown setting is ignored", func(c *confClient) {
			c.raw(http2.FrameSettings, 0, 0, setting(0xfa, 7))
			c.alive()
			c.headers(1, true, grpcReq(mUnary)...)
			c.wantStatus(1, "200")
		}},
		{"§6.5.3 SETTINGS is acknowledged", func(c *confClient) {
			c.write(func(fr *http2.Framer) error {
				return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
			})
			for _, f := range c.alive() {
				if s, ok := f.(*http2.SettingsFrame); ok && s.IsAck() {
					return
				}
			}
			c.t.Fatal("no SETTINGS ACK before the PING ACK")
		}},
	})
}

func TestRFC9113_6_7_PING(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§6.7 PING is answered with an ACK carrying the same data", func(c *confClient) {
			c.alive() // alive matches the ACK's data
		}},
		{"§6.7 a PING ACK is not answered", func(c *confClient) {
			c.write(func(fr *http2.Framer) error { return fr.WritePing(true, [8]byte{'u', 'n', 's', 'o', 'l'}) })
			for _, f := range c.alive() {
				if p, ok := f.(*http2.PingFrame); ok {
					c.t.Fatalf("the engine answered a PING ACK with %v", p.Header())
				}
			}
		}},
		{"§6.7 PING on a stream other than 0 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FramePing, 0, 1, make([]byte, 8))
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.7 PING of a length other than 8 is a connection error FRAME_SIZE_ERROR", func(c *confClient) {
			c.raw(http2.FramePing, 0, 0, make([]byte, 7))
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
	})
}

func TestRFC9113_6_8_GOAWAY(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§6.8 GOAWAY on a stream other than 0 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameGoAway, 0, 1, make([]byte, 8))
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.8 GOAWAY shorter than 8 octets is a connection error FRAME_SIZE_ERROR", func(c *confClient) {
			c.raw(http2.FrameGoAway, 0, 0, make([]byte, 7))
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.8 after the client's GOAWAY its open streams finish, then the connection closes", func(c *confClient) {
			c.headers(1, false, grpcReq(mUnary)...)
			c.write(func(fr *http2.Framer) error { return fr.WriteGoAway(1, http2.ErrCodeNo, nil) })
			c.data(1, true, body)
			c.wantStatus(1, "200")
			if got := c.respBody(1); !bytes.Equal(got, body) {
				c.t.Fatalf("echoed %q, want %q", got, body)
			}
			c.wantClosed()
		}},
	})
}

func TestRFC9113_6_9_WINDOW_UPDATE(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§6.9 WINDOW_UPDATE with increment 0 on a stream is a stream error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.raw(http2.FrameWindowUpdate, 0, 1, []byte{0, 0, 0, 0})
			c.wantStreamError(1, http2.ErrCodeProtocol)
		}},
		{"§6.9 WINDOW_UPDATE with increment 0 on the connection is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameWindowUpdate, 0, 0, []byte{0, 0, 0, 0})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.9 WINDOW_UPDATE of a length other than 4 is a connection error FRAME_SIZE_ERROR", func(c *confClient) {
			c.raw(http2.FrameWindowUpdate, 0, 0, []byte{0, 0, 1})
			c.wantConnError(http2.ErrCodeFrameSize)
		}},
		{"§6.9.1 a connection window above 2^31-1 is a connection error FLOW_CONTROL_ERROR", func(c *confClient) {
			c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 1<<31-1) })
			c.wantConnError(http2.ErrCodeFlowControl)
		}},
		{"§6.9.1 a stream window above 2^31-1 is a stream error FLOW_CONTROL_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(1, 1<<31-1) })
			c.wantStreamError(1, http2.ErrCodeFlowControl)
		}},
		{"§6.9.2 a SETTINGS_INITIAL_WINDOW_SIZE that overflows a stream window is a connection error FLOW_CONTROL_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteWindowUpdate(1, 1<<31-1-65535); err != nil {
					return err
				}
				return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65536})
			})
			c.wantConnError(http2.ErrCodeFlowControl)
		}},
	})
	t.Run("§6.9.1 DATA beyond the stream window the engine advertised is a stream error FLOW_CONTROL_ERROR", func(t *testing.T) {
		// An upstream that reads what it granted and no more: the engine forwards at most 64 KiB
		// and so grants at most that back, whatever the timing. (Against an upstream that reads,
		// the engine would grant back what it forwarded while the client is still sending, and
		// the client would never exceed its window.)
		ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {})
		ru.noGrant = true
		const window = 64 << 10
		addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), Logger: discardLogger(), InitialWindow: window})
		c := dialConf(t, addr)
		c.headers(1, false, grpcReq(mWait)...)
		chunk := make([]byte, 16384)
		go c.do(func(fr *http2.Framer) error {
			for i := 0; i < 10; i++ { // 160 KiB > the 64 KiB stream window plus the 64 KiB forwarded
				if err := fr.WriteData(1, false, chunk); err != nil {
					return err
				}
			}
			return nil
		})
		c.wantStreamError(1, http2.ErrCodeFlowControl)
	})
	t.Run("§6.9.1 DATA beyond the connection window the engine advertised is a connection error FLOW_CONTROL_ERROR", func(t *testing.T) {
		ru := startRawUpstream(t, func(sc *rawServerConn, n int64, f *http2.MetaHeadersFrame) {})
		ru.noGrant = true // so the engine cannot forward more than 64 KiB, nor grant more back
		addr, _, _ := startProxy(t, Config{Router: newRecorder(ru.addr), Logger: discardLogger(), ConnWindow: 65535, InitialWindow: 1 << 20})
		c := dialConf(t, addr)
		c.headers(1, false, grpcReq(mWait)...)
		chunk := make([]byte, 16384)
		go c.do(func(fr *http2.Framer) error {
			for i := 0; i < 16; i++ { // 256 KiB: more than the 64 KiB window plus the 64 KiB forwarded
				if err := fr.WriteData(1, false, chunk); err != nil {
					return err
				}
			}
			return nil
		})
		c.wantConnError(http2.ErrCodeFlowControl)
	})
}

func TestRFC9113_6_10_CONTINUATION(t *testing.T) {
	addr, _, _ := confProxy(t, Config{})
	runConf(t, addr, []confCase{
		{"§6.10 CONTINUATION after a complete header block is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.headers(1, false, grpcReq(mWait)...)
			c.write(func(fr *http2.Framer) error { return fr.WriteContinuation(1, true, c.block("x-late", "1")) })
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.10 a frame of another type inside a header block is a connection error PROTOCOL_ERROR", func(c *confClient) {
			blk := c.block(grpcReq(mUnary)...)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:4], EndStream: true}); err != nil {
					return err
				}
				return fr.WritePing(false, [8]byte{2})
			})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.10 CONTINUATION of another stream inside a header block is a connection error PROTOCOL_ERROR", func(c *confClient) {
			blk := c.block(grpcReq(mUnary)...)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:4], EndStream: true}); err != nil {
					return err
				}
				return fr.WriteContinuation(3, true, blk[4:])
			})
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.10 CONTINUATION on stream 0 is a connection error PROTOCOL_ERROR", func(c *confClient) {
			c.raw(http2.FrameContinuation, http2.FlagContinuationEndHeaders, 0, nil)
			c.wantConnError(http2.ErrCodeProtocol)
		}},
		{"§6.10 a header block split over CONTINUATION frames is served", func(c *confClient) {
			blk := c.block(grpcReq(mUnary)...)
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:3], EndStream: true}); err != nil {
					return err
				}
				if err := fr.WriteContinuation(1, false, blk[3:7]); err != nil {
					return err
				}
				return fr.WriteContinuation(1, true, blk[7:])
			})
			c.wantStatus(1, "200")
		}},
	})
}
