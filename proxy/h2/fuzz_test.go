package h2

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzServeConn feeds arbitrary bytes after the client preface into ServeConn over net.Pipe.
// The router sends every stream to an upstream that answers at once, so both directions run.
// The engine must not panic, hang or leak the connection.
func FuzzServeConn(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	up := startRawUpstream(f, func(sc *rawServerConn, n int64, mh *http2.MetaHeadersFrame) {
		sc.respondGRPC(mh.StreamID, []byte("ok"))
	})
	srv := NewServer(Config{Router: newRecorder(up.addr), Logger: discardLogger(), MaxReplayBytes: 1024})
	f.Cleanup(func() { srv.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ServeConn(context.Background(), server, netip.MustParseAddrPort("127.0.0.1:80"))
		}()
		go io.Copy(io.Discard, client) // the engine's writes must not block
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write([]byte(http2.ClientPreface))
		client.Write(data)
		time.Sleep(time.Millisecond)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return after the client closed")
		}
	})
}

// fuzzSeeds are valid frame sequences: settings, a gRPC unary call, pings, window updates,
// resets, trailers, a CONTINUATION split, GOAWAY.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	build := func(w func(fr *http2.Framer, enc func(kv ...string) []byte)) {
		var buf, hb bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		he := hpack.NewEncoder(&hb)
		enc := func(kv ...string) []byte {
			hb.Reset()
			for i := 0; i+1 < len(kv); i += 2 {
				he.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			return append([]byte(nil), hb.Bytes()...)
		}
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		w(fr, enc)
		seeds = append(seeds, buf.Bytes())
	}
	req := reqHeaders()
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(req...), EndHeaders: true})
		fr.WriteData(1, true, grpcFrame([]byte("hello")))
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WritePing(false, [8]byte{1})
		fr.WriteWindowUpdate(0, 1000)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(req...), EndHeaders: true})
		fr.WriteWindowUpdate(1, 1000)
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(req...), EndHeaders: true, EndStream: true})
		fr.WriteGoAway(3, http2.ErrCodeNo, nil)
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		b := enc(req...)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:5], EndHeaders: false})
		fr.WriteContinuation(1, true, b[5:])
		fr.WriteDataPadded(1, false, []byte("abc"), []byte{0, 0, 0})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc("x-trailer", "v"), EndHeaders: true, EndStream: true})
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(req...), EndHeaders: true, EndStream: true})
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
		fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 1})
	})
	return seeds
}
