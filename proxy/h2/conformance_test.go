package h2

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The RFC 9113 conformance suite (rfc9113_*_test.go) plays the client at the frame level: it
// writes raw frames with http2.Framer and HPACK against a real engine whose upstream is a real
// server, and checks the answer the RFC requires, one table per section. Frames are logged only
// when a case fails, as in x/net's serverTester.

// confClient is a frame-level client for one conformance case.
type confClient struct {
	*rawClient
	pings atomic.Uint64
}

// dialConf opens a connection to the engine and completes the handshake (both SETTINGS).
func dialConf(t *testing.T, addr netip.AddrPort) *confClient {
	t.Helper()
	c := &confClient{rawClient: dialRaw(t, addr)}
	c.alive()
	return c
}

// dialBare opens a connection and sends only the preface: the case writes the first frame.
func dialBare(t *testing.T, addr netip.AddrPort) *confClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	rc := &rawClient{t: t, c: nc, log: &frameLog{}}
	rc.log.attach(t, "client")
	rc.fr = http2.NewFramer(nc, nc)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.enc = hpack.NewEncoder(&rc.encBuf)
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	return &confClient{rawClient: rc}
}

// grpcReq is a gRPC request block for method path, with extra fields appended.
func grpcReq(path string, extra ...string) []string {
	return append([]string{":method", "POST", ":scheme", "http", ":authority", "svc.test", ":path", path,
		"content-type", "application/grpc", "te", "trailers"}, extra...)
}

// getReq is a plain GET request block with extra fields appended.
func getReq(extra ...string) []string {
	return append([]string{":method", "GET", ":scheme", "http", ":authority", "svc.test", ":path", "/"}, extra...)
}

// write runs w with the client's Framer, failing the case on a write error.
func (c *confClient) write(w func(fr *http2.Framer) error) {
	c.t.Helper()
	if err := c.do(w); err != nil {
		c.t.Fatalf("writing frames: %v", err)
	}
}

func (c *confClient) data(id uint32, end bool, p []byte) {
	c.t.Helper()
	c.write(func(fr *http2.Framer) error { return fr.WriteData(id, end, p) })
}

func (c *confClient) raw(t http2.FrameType, flags http2.Flags, id uint32, payload []byte) {
	c.t.Helper()
	c.write(func(fr *http2.Framer) error { return fr.WriteRawFrame(t, flags, id, payload) })
}

// read returns the next frame the engine sends, acknowledging (and skipping) its SETTINGS and
// skipping WINDOW_UPDATE; io.EOF (or another read error) once the engine closed the connection.
func (c *confClient) read(deadline time.Time) (http2.Frame, error) {
	c.c.SetReadDeadline(deadline)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.log.mu.Lock()
			c.log.lines = append(c.log.lines, "read: "+err.Error())
			c.log.mu.Unlock()
			return nil, err
		}
		c.log.add("<-", f)
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				return f, nil
			}
			c.do(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			continue
		case *http2.WindowUpdateFrame:
			continue
		}
		return f, nil
	}
}

const confWait = 10 * time.Second

// alive sends a PING and waits for its ACK: everything the engine answered to the frames
// written before it has arrived by then (one read loop answers in order). It fails the case on a
// GOAWAY or a closed connection, and returns the frames read before the ACK.
func (c *confClient) alive() []http2.Frame {
	c.t.Helper()
	var data [8]byte
	n := c.pings.Add(1)
	copy(data[:], fmt.Sprintf("conf%04d", n))
	c.write(func(fr *http2.Framer) error { return fr.WritePing(false, data) })
	deadline := time.Now().Add(confWait)
	var seen []http2.Frame
	for {
		f, err := c.read(deadline)
		if err != nil {
			c.t.Fatalf("waiting for the PING ACK: %v (the engine closed the connection or did not answer)", err)
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if f.IsAck() && f.Data == data {
				return seen
			}
		case *http2.GoAwayFrame:
			c.t.Fatalf("GOAWAY %v (%q) where the connection must survive", f.ErrCode, f.DebugData())
		}
		seen = append(seen, f)
	}
}

// wantConnError expects a connection error: GOAWAY with code, then the end of the connection.
func (c *confClient) wantConnError(code http2.ErrCode) *http2.GoAwayFrame {
	c.t.Helper()
	deadline := time.Now().Add(confWait)
	var g *http2.GoAwayFrame
	for {
		f, err := c.read(deadline)
		if err != nil {
			c.t.Fatalf("want GOAWAY %v; got %v before any GOAWAY", code, err)
		}
		var ok bool
		if g, ok = f.(*http2.GoAwayFrame); !ok {
			continue
		}
		if g.ErrCode != code {
			c.t.Fatalf("GOAWAY %v (%q), want %v", g.ErrCode, g.DebugData(), code)
		}
		break
	}
	for {
		_, err := c.read(deadline)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatalf("the connection stayed open after GOAWAY")
		}
		return g
	}
}

// wantStreamError expects RST_STREAM with code on stream id, and the connection to survive it.
func (c *confClient) wantStreamError(id uint32, code http2.ErrCode) {
	c.t.Helper()
	deadline := time.Now().Add(confWait)
	for {
		f, err := c.read(deadline)
		if err != nil {
			c.t.Fatalf("want RST_STREAM %v on stream %d: %v", code, id, err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			c.t.Fatalf("GOAWAY %v (%q), want RST_STREAM %v on stream %d", f.ErrCode, f.DebugData(), code, id)
		case *http2.RSTStreamFrame:
			if f.StreamID != id {
				continue
			}
			if f.ErrCode != code {
				c.t.Fatalf("RST_STREAM %v on stream %d, want %v", f.ErrCode, id, code)
			}
			c.alive()
			return
		}
	}
}

// wantIgnored expects the engine to discard what was sent on the streams ids: no RST_STREAM on
// them and no GOAWAY before the answer to a PING written after them.
func (c *confClient) wantIgnored(ids ...uint32) {
	c.t.Helper()
	for _, f := range c.alive() {
		if r, ok := f.(*http2.RSTStreamFrame); ok {
			for _, id := range ids {
				if r.StreamID == id {
					c.t.Fatalf("RST_STREAM %v on stream %d, want the frames discarded", r.ErrCode, id)
				}
			}
		}
	}
}

// wantClosed expects the engine to close the connection without a GOAWAY error code.
func (c *confClient) wantClosed() {
	c.t.Helper()
	deadline := time.Now().Add(confWait)
	for {
		f, err := c.read(deadline)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("the connection stayed open")
			}
			return
		}
		if g, ok := f.(*http2.GoAwayFrame); ok && g.ErrCode != http2.ErrCodeNo {
			c.t.Fatalf("GOAWAY %v (%q), want a clean close", g.ErrCode, g.DebugData())
		}
	}
}

// respBody reads stream id's response DATA until END_STREAM and returns its payload.
func (c *confClient) respBody(id uint32) []byte {
	c.t.Helper()
	deadline := time.Now().Add(confWait)
	var b []byte
	for {
		f, err := c.read(deadline)
		if err != nil {
			c.t.Fatalf("reading the body of stream %d: %v", id, err)
		}
		if f.Header().StreamID != id {
			continue
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			b = append(b, f.Data()...)
			if f.StreamEnded() {
				return b
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				return b
			}
		case *http2.RSTStreamFrame:
			c.t.Fatalf("RST_STREAM %v on stream %d while reading its body", f.ErrCode, id)
		}
	}
}

// response reads until the response HEADERS of stream id and returns them.
func (c *confClient) response(id uint32) *http2.MetaHeadersFrame {
	c.t.Helper()
	deadline := time.Now().Add(confWait)
	for {
		f, err := c.read(deadline)
		if err != nil {
			c.t.Fatalf("want the response on stream %d: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			// A graceful GOAWAY that covers the stream lets it finish (§6.8).
			if f.ErrCode != http2.ErrCodeNo || f.LastStreamID < id {
				c.t.Fatalf("GOAWAY %v (%q), want a response on stream %d", f.ErrCode, f.DebugData(), id)
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				c.t.Fatalf("RST_STREAM %v on stream %d, want a response", f.ErrCode, id)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return f
			}
		}
	}
}

// wantStatus expects a response with :status status on stream id.
func (c *confClient) wantStatus(id uint32, status string) *http2.MetaHeadersFrame {
	c.t.Helper()
	h := c.response(id)
	if got := fieldValue(h, ":status"); got != status {
		c.t.Fatalf(":status %q on stream %d, want %s", got, id, status)
	}
	return h
}

// waitEnd reads until the engine ends stream id (END_STREAM or RST_STREAM).
func (c *confClient) waitEnd(id uint32) {
	c.t.Helper()
	deadline := time.Now().Add(confWait)
	for {
		f, err := c.read(deadline)
		if err != nil {
			c.t.Fatalf("waiting for the end of stream %d: %v", id, err)
		}
		if f.Header().StreamID != id {
			continue
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			return
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				return
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				return
			}
		}
	}
}

// confCase is one conformance case: run sends frames and checks the answer.
type confCase struct {
	name string
	run  func(c *confClient)
}

// runConf runs each case on a fresh client connection to addr.
func runConf(t *testing.T, addr netip.AddrPort, cases []confCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialConf(t, addr)
			tc.run(c)
		})
	}
}

// confProxy is an engine in front of a real gRPC server (the echo service of helpers_test.go).
func confProxy(t *testing.T, cfg Config) (netip.AddrPort, *Server, *recorder) {
	t.Helper()
	ts := startGRPCServer(t, "conf")
	rec := newRecorder(ts.addr)
	cfg.Router = rec
	if cfg.Logger == nil {
		cfg.Logger = discardLogger()
	}
	addr, srv, _ := startProxy(t, cfg)
	return addr, srv, rec
}

// upstreamRST collects the RST_STREAM frames a rawUpstream receives.
func upstreamRST(ru *rawUpstream) <-chan *http2.RSTStreamFrame {
	ch := make(chan *http2.RSTStreamFrame, 64)
	ru.onRST = func(sc *rawServerConn, f *http2.RSTStreamFrame) {
		cp := *f
		select {
		case ch <- &cp:
		default:
		}
	}
	return ch
}

// wantUpstreamRST waits for the upstream to receive RST_STREAM with code.
func wantUpstreamRST(t *testing.T, ch <-chan *http2.RSTStreamFrame, code http2.ErrCode) {
	t.Helper()
	select {
	case f := <-ch:
		if f.ErrCode != code {
			t.Fatalf("the upstream received RST_STREAM %v on stream %d, want %v", f.ErrCode, f.StreamID, code)
		}
	case <-time.After(confWait):
		t.Fatalf("the upstream received no RST_STREAM; want %v", code)
	}
}
