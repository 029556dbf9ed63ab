package h2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzFrameSequence decodes its input as a sequence of frame operations (fuzzOps below says
// how) and plays them, as a client, into a real engine whose upstream is a real gRPC server.
// Unlike FuzzServeConn, which mostly explores the Framer, every operation becomes a well-framed
// frame with a valid HPACK block, so the input reaches the stream state machine, the header
// validator and flow control. Each input gets its own Server, and ends checked:
//   - no panic, and the engine never hangs: the connection answers a final PING, or the engine
//     ended it with a GOAWAY first (never a silent close, unless the client said GOAWAY);
//   - the engine sends nothing on a stream the client never named, and no HEADERS or DATA on a
//     stream after resetting it; its HPACK output decodes;
//   - bounded memory: streams, closed-stream memory, buffered bytes per stream and queued
//     streams stay within their configured bounds;
//   - no leaked goroutine once the client connection and the Server are closed.
func FuzzFrameSequence(f *testing.F) {
	for _, seed := range seqSeeds() {
		f.Add(seed)
	}
	ts := startGRPCServer(f, "fuzz")
	f.Fuzz(func(t *testing.T, data []byte) {
		runSequence(t, ts.addr, data)
	})
}

// seqConfig is the engine's configuration for the fuzz runs: small bounds, so inputs reach them.
func seqConfig() Config {
	return Config{
		MaxConcurrentStreams: 8,
		MaxHeaderListSize:    4096,
		InitialWindow:        65535,
		ConnWindow:           2 * 65535,
		MaxReplayBytes:       1024,
		ResetBurst:           20,
		ResetRate:            10,
		MaxQueuedPerEndpoint: 16,
	}
}

func runSequence(t *testing.T, upstream netip.AddrPort, data []byte) {
	base := runtime.NumGoroutine()
	cfg := seqConfig()
	cfg.Router = newRecorder(upstream)
	cfg.Logger = discardLogger()
	srv := NewServer(cfg)
	client, server := net.Pipe()
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.ServeConn(context.Background(), server, netip.MustParseAddrPort("127.0.0.1:80"))
	}()
	p := newSeqPlayer(t, client)
	p.play(data)
	p.finish()
	checkFootprint(t, srv, &cfg)

	client.Close()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		dumpGoroutines(t)
		t.Fatal("ServeConn did not return after the client closed")
	}
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		dumpGoroutines(t)
		t.Fatal("Server.Close did not return")
	}
	<-p.readDone
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			dumpGoroutines(t)
			t.Fatalf("%d goroutines after the Server closed, %d before it started", runtime.NumGoroutine(), base)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func dumpGoroutines(t *testing.T) {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	t.Log(b.String())
}

// checkFootprint checks what the engine holds against the bounds it was configured with.
func checkFootprint(t *testing.T, srv *Server, cfg *Config) {
	srv.mu.Lock()
	var clients []*clientConn
	for cc := range srv.clients {
		clients = append(clients, cc)
	}
	var pools []*pool
	for _, p := range srv.pools {
		pools = append(pools, p)
	}
	srv.mu.Unlock()
	for _, cc := range clients {
		cc.mu.Lock()
		var list []*stream
		for _, s := range cc.streams {
			list = append(list, s)
		}
		reset, skipped := len(cc.closed.reset), len(cc.closed.skipped)
		cc.mu.Unlock()
		if len(list) > int(cfg.MaxConcurrentStreams) {
			t.Errorf("%d streams on one connection; the limit is %d", len(list), cfg.MaxConcurrentStreams)
		}
		if reset > maxResetMemory || skipped > maxSkipMemory {
			t.Errorf("closed-stream memory %d resets and %d skipped ranges; the bounds are %d and %d", reset, skipped, maxResetMemory, maxSkipMemory)
		}
		for _, s := range list {
			s.mu.Lock()
			req, resp := len(s.req.buf), len(s.resp.buf)
			s.mu.Unlock()
			if req > int(cfg.InitialWindow)+cfg.MaxReplayBytes || resp > int(cfg.InitialWindow) {
				t.Errorf("stream %d buffers %d request and %d response bytes; the window is %d (+%d replay)", s.id, req, resp, cfg.InitialWindow, cfg.MaxReplayBytes)
			}
		}
	}
	for _, p := range pools {
		p.mu.Lock()
		n := len(p.waiters)
		p.mu.Unlock()
		if n > cfg.MaxQueuedPerEndpoint {
			t.Errorf("%d streams queued for %s; the bound is %d", n, p.addr, cfg.MaxQueuedPerEndpoint)
		}
	}
}

// seqPlayer writes the frames of one input and checks what the engine answers.
type seqPlayer struct {
	t      *testing.T
	c      net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	in     []byte
	last   uint32 // highest stream id the client opened
	dead   bool   // a write failed: the engine closed the connection
	bye    bool   // the client sent GOAWAY: the engine may close without one of its own

	mu      sync.Mutex
	named   map[uint32]bool // every stream id the client put in a frame header
	reset   map[uint32]bool // streams the engine reset
	goaway  bool            // the engine sent GOAWAY
	ended   bool            // the engine's side ended, or it sent GOAWAY for an error (it reads no more)
	readErr error
	pings   map[[8]byte]chan struct{}
	nextP   uint64

	readDone chan struct{}
	log      *frameLog // both directions, printed if the input fails
}

func newSeqPlayer(t *testing.T, c net.Conn) *seqPlayer {
	p := &seqPlayer{t: t, c: c, named: map[uint32]bool{}, reset: map[uint32]bool{}, pings: map[[8]byte]chan struct{}{},
		readDone: make(chan struct{}), log: &frameLog{}}
	p.log.attach(t, "client")
	p.fr = http2.NewFramer(c, nil)
	p.fr.SetMaxReadFrameSize(1 << 24)
	p.fr.AllowIllegalWrites = true
	p.enc = hpack.NewEncoder(&p.encBuf)
	go p.read()
	p.write(func() error {
		if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
			return err
		}
		return p.fr.WriteSettings()
	})
	return p
}

// read drains the engine's frames (the engine must never block on this client) and checks them.
func (p *seqPlayer) read() {
	defer close(p.readDone)
	fr := http2.NewFramer(nil, p.c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	fr.SetMaxReadFrameSize(1 << 24)
	for {
		f, err := fr.ReadFrame()
		p.mu.Lock()
		if err != nil {
			p.ended = true
			p.readErr = err
			for _, ch := range p.pings {
				close(ch)
			}
			p.pings = map[[8]byte]chan struct{}{}
			p.mu.Unlock()
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				p.t.Errorf("the engine sent a frame its client cannot read: %v", err)
			}
			io.Copy(io.Discard, p.c)
			return
		}
		p.log.add("<-", f)
		id := f.Header().StreamID
		if id != 0 && !p.named[id] {
			p.t.Errorf("the engine sent %v on stream %d, which the client never named", f.Header().Type, id)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			p.reset[id] = true
		case *http2.MetaHeadersFrame, *http2.DataFrame:
			if p.reset[id] {
				p.t.Errorf("the engine sent %v on stream %d after resetting it", f.Header().Type, id)
			}
		case *http2.GoAwayFrame:
			p.goaway = true
			if f.ErrCode != http2.ErrCodeNo {
				// A connection error: the engine discards what follows until it closes.
				p.ended = true
				for _, ch := range p.pings {
					close(ch)
				}
				p.pings = map[[8]byte]chan struct{}{}
			}
		case *http2.PingFrame:
			if ch, ok := p.pings[f.Data]; ok && f.IsAck() {
				close(ch)
				delete(p.pings, f.Data)
			}
		}
		p.mu.Unlock()
	}
}

// write runs w unless the connection is gone; a write the engine does not take within 5s
// means the engine stopped reading its client, which it never may.
func (p *seqPlayer) write(w func() error) {
	if p.dead {
		return
	}
	p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	err := w()
	var ne net.Error
	switch {
	case err == nil:
	case errors.As(err, &ne) && ne.Timeout():
		dumpGoroutines(p.t)
		p.t.Fatalf("the engine stopped reading its client: %v", err)
	default:
		p.dead = true // it closed the connection; checked in finish
	}
}

// barrier waits until the engine answered a PING written now, or ended the connection.
func (p *seqPlayer) barrier() {
	if p.stopped() {
		return
	}
	p.mu.Lock()
	p.nextP++
	var data [8]byte
	binary.BigEndian.PutUint64(data[:], p.nextP)
	ch := make(chan struct{})
	if p.ended {
		close(ch)
	} else {
		p.pings[data] = ch
	}
	p.mu.Unlock()
	p.write(func() error { return p.fr.WritePing(false, data) })
	if p.dead {
		return
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		dumpGoroutines(p.t)
		p.t.Fatal("the engine neither answered a PING nor ended the connection")
	}
}

// stopped reports whether the engine no longer reads what the client sends.
func (p *seqPlayer) stopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dead || p.ended
}

// finish checks the connection ended in a valid state: still serving (it answers a PING), or
// ended by the engine with a GOAWAY first.
func (p *seqPlayer) finish() {
	p.barrier()
	if p.dead {
		// The engine closed the pipe: let the reader take in all it wrote before judging.
		select {
		case <-p.readDone:
		case <-time.After(10 * time.Second):
			p.t.Fatal("the client's reader did not see the engine's close")
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if (p.ended || p.dead) && !p.goaway && !p.bye {
		p.t.Errorf("the engine closed the connection without a GOAWAY (read: %v)", p.readErr)
	}
}

// The input format: a sequence of operations, each an opcode byte and its arguments, bytes
// read past the end being 0.
func (p *seqPlayer) next() byte {
	if len(p.in) == 0 {
		return 0
	}
	b := p.in[0]
	p.in = p.in[1:]
	return b
}

func (p *seqPlayer) next32() uint32 {
	return uint32(p.next())<<24 | uint32(p.next())<<16 | uint32(p.next())<<8 | uint32(p.next())
}

// streamID picks a stream id relative to the ones the client opened, so that inputs name
// open, closed, idle, skipped, lower and even streams often.
func (p *seqPlayer) streamID(b byte) uint32 {
	var id uint32
	switch b % 8 {
	case 0:
		id = 0
	case 1:
		id = max(p.last, 1)
	case 2:
		id = p.last + 2
		if p.last == 0 {
			id = 1
		}
	case 3:
		id = max(p.last, 3) - 2
	case 4:
		id = 2 * (uint32(b>>3) + 1)
	case 5:
		id = 1
	case 6:
		id = maxStreamID
	case 7:
		id = p.last + 2 + 2*uint32(b>>3)
		if p.last == 0 {
			id = 1 + 2*uint32(b>>3)
		}
	}
	return id & maxStreamID // what the frame header carries
}

// name records that the client puts id in the header of the frame it writes next.
func (p *seqPlayer) name(id uint32) {
	p.mu.Lock()
	p.named[id] = true
	p.mu.Unlock()
	p.log.mu.Lock()
	p.log.lines = append(p.log.lines, fmt.Sprintf("-> frame on stream %d", id))
	p.log.mu.Unlock()
}

var seqFields = []hpack.HeaderField{
	{Name: "content-type", Value: "application/grpc"},
	{Name: "te", Value: "trailers"},
	{Name: "te", Value: "gzip"},
	{Name: "connection", Value: "close"},
	{Name: "x-a", Value: "b"},
	{Name: "X-Upper", Value: "v"},
	{Name: "x-ws", Value: " v"},
	{Name: "content-length", Value: ""}, // value from the next input byte
	{Name: "host", Value: "svc.test"},
	{Name: "host", Value: "other.test"},
	{Name: ":path", Value: "/x"},
	{Name: ":status", Value: "200"},
	{Name: ":method", Value: "GET"},
	{Name: "x-nul", Value: "a\x00b"},
	{Name: "grpc-timeout", Value: "1S"},
	{Name: "x-big", Value: strings.Repeat("b", 3000)},
	{Name: ":protocol", Value: "websocket"},
	{Name: "transfer-encoding", Value: "chunked"},
	{Name: "", Value: "empty name"},
	{Name: "x-sleep", Value: "50ms"},
}

var seqPaths = []string{mUnary, mWait, mBidi, mClientStream}

// block encodes a header block: unless raw, a gRPC request's pseudo-headers first, then n
// fields from seqFields chosen by the input.
func (p *seqPlayer) block(raw bool) []byte {
	p.encBuf.Reset()
	if !raw {
		for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "svc.test"},
			{":path", seqPaths[int(p.next())%len(seqPaths)]}} {
			p.enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
	}
	for n := int(p.next() % 8); n > 0; n-- {
		f := seqFields[int(p.next())%len(seqFields)]
		if f.Name == "content-length" {
			f.Value = fmt.Sprint(p.next())
		}
		p.enc.WriteField(f)
	}
	return bytes.Clone(p.encBuf.Bytes())
}

// play runs the operations of in.
func (p *seqPlayer) play(in []byte) {
	p.in = in
	for ops := 0; len(p.in) > 0 && ops < 200 && !p.stopped(); ops++ {
		switch op := p.next(); op % 13 {
		case 0: // HEADERS: flags 1 END_STREAM, 2 split into CONTINUATION, 4 padded, 8 priority,
			// 16 a PING inside the block, 32 no END_HEADERS at all, 64 no request pseudo-headers
			id := p.streamID(p.next())
			fl := p.next()
			blk := p.block(fl&64 != 0)
			dep := p.streamID(p.next())
			p.name(id)
			if id%2 == 1 && id > p.last && id <= maxStreamID {
				p.last = id
			}
			cut := len(blk)
			if fl&2 != 0 {
				cut = len(blk) / 2
			}
			p.write(func() error {
				hp := http2.HeadersFrameParam{StreamID: id, BlockFragment: blk[:cut], EndStream: fl&1 != 0,
					EndHeaders: cut == len(blk) && fl&32 == 0}
				if fl&4 != 0 {
					hp.PadLength = p.next() % 32
				}
				if fl&8 != 0 {
					hp.Priority = http2.PriorityParam{StreamDep: dep, Weight: p.next()}
				}
				if err := p.fr.WriteHeaders(hp); err != nil {
					return err
				}
				if fl&16 != 0 {
					if err := p.fr.WritePing(false, [8]byte{'i', 'n', 's', 'i', 'd', 'e'}); err != nil {
						return err
					}
				}
				if cut < len(blk) {
					return p.fr.WriteContinuation(id, fl&32 == 0, blk[cut:])
				}
				return nil
			})
		case 1: // DATA: flags 1 END_STREAM, 2 padded, 4 a gRPC message; length up to 16 KiB
			id := p.streamID(p.next())
			fl := p.next()
			n := int(p.next()) | int(p.next()%64)<<8
			payload := make([]byte, n)
			if fl&4 != 0 && n >= 5 {
				binary.BigEndian.PutUint32(payload[1:], uint32(n-5))
			}
			p.name(id)
			p.write(func() error {
				if fl&2 != 0 {
					pad := make([]byte, p.next()%32)
					return p.fr.WriteDataPadded(id, fl&1 != 0, payload[:min(n, 16384-len(pad)-1)], pad)
				}
				return p.fr.WriteData(id, fl&1 != 0, payload)
			})
		case 2: // WINDOW_UPDATE
			id := p.streamID(p.next())
			inc := p.next32() & maxWindow
			p.name(id)
			p.write(func() error {
				return p.fr.WriteRawFrame(http2.FrameWindowUpdate, 0, id, binary.BigEndian.AppendUint32(nil, inc))
			})
		case 3: // RST_STREAM
			id := p.streamID(p.next())
			code := http2.ErrCode(p.next() % 14)
			p.name(id)
			p.write(func() error { return p.fr.WriteRSTStream(id, code) })
		case 4: // SETTINGS with up to 3 parameters
			var ss []http2.Setting
			for n := p.next() % 4; n > 0; n-- {
				ss = append(ss, http2.Setting{ID: http2.SettingID(p.next() % 8), Val: p.next32()})
			}
			p.write(func() error { return p.fr.WriteSettings(ss...) })
		case 5:
			p.write(p.fr.WriteSettingsAck)
		case 6:
			ack := p.next()&1 != 0
			p.write(func() error { return p.fr.WritePing(ack, [8]byte{'f', 'u', 'z', 'z'}) })
		case 7: // GOAWAY
			last := p.streamID(p.next())
			code := http2.ErrCode(p.next() % 14)
			p.bye = true
			p.write(func() error { return p.fr.WriteGoAway(last, code, nil) })
		case 8: // PRIORITY
			id := p.streamID(p.next())
			dep := p.streamID(p.next())
			w := p.next()
			p.name(id)
			p.write(func() error { return p.fr.WritePriority(id, http2.PriorityParam{StreamDep: dep, Weight: w}) })
		case 9: // CONTINUATION
			id := p.streamID(p.next())
			end := p.next()&1 != 0
			blk := p.block(true)
			p.name(id)
			p.write(func() error { return p.fr.WriteContinuation(id, end, blk) })
		case 10: // any frame: type (10 and 11 unknown), flags, up to 31 payload bytes
			typ := http2.FrameType(p.next() % 12)
			if typ >= 10 {
				typ = 0xfa
			}
			fl := http2.Flags(p.next())
			id := p.streamID(p.next())
			payload := make([]byte, p.next()%32)
			for i := range payload {
				payload[i] = p.next()
			}
			p.name(id)
			p.bye = p.bye || typ == http2.FrameGoAway
			p.write(func() error { return p.fr.WriteRawFrame(typ, fl, id, payload) })
		case 11:
			p.barrier()
		case 12: // a burst of streams opened and reset (the rapid-reset shape)
			for n := p.next() % 32; n > 0 && !p.dead; n-- {
				id := p.streamID(2)
				p.last = id
				blk := p.block(false)
				p.name(id)
				p.write(func() error {
					if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndHeaders: true}); err != nil {
						return err
					}
					return p.fr.WriteRSTStream(id, http2.ErrCodeCancel)
				})
			}
		}
	}
}

// seqSeeds are the committed seed corpus's shapes (testdata/fuzz/FuzzFrameSequence holds the
// same, written by TestWriteFrameSequenceSeeds): each exercises one rule of RFC 9113.
func seqSeeds() [][]byte {
	const (
		opHeaders, opData, opWindow, opRST, opSettings, opSettingsAck, opPing, opGoAway, opPriority, opCont, opRaw, opBarrier, opBurst = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
	)
	const (
		idZero, idLast, idNew, idLower, idEven, idOne, idMax = 0, 1, 2, 3, 4, 5, 6
	)
	return [][]byte{
		// A unary call with a body, then a barrier.
		{opHeaders, idNew, 0, 0, 0, 0, opData, idLast, 5, 10, 0, opBarrier},
		// The same stream's DATA after both ends closed it (STREAM_CLOSED).
		{opHeaders, idNew, 1, 0, 0, 0, opBarrier, opData, idLast, 1, 4, 0, opBarrier},
		// A stream reset by the client, then DATA and HEADERS on it.
		{opHeaders, idNew, 0, 1, 0, 0, opRST, idLast, 8, opData, idLast, 0, 3, 0, opHeaders, idLast, 65, 0, 0},
		// A lower stream id after a higher one (§5.1.1).
		{opHeaders, 7 | 3<<3, 1, 0, 0, 0, opHeaders, idLower, 1, 0, 0, 0},
		// HEADERS and PRIORITY depending on themselves (§5.3.1).
		{opHeaders, idNew, 9, 0, 0, idNew, 16, opPriority, idNew, idNew, 1, opBarrier},
		// HEADERS padded beyond its payload, as a raw frame (§6.2).
		{opRaw, 1, 0x0c, idNew, 3, 200, 0x82, 0x84},
		// WINDOW_UPDATE of 0 on an open stream, on the connection, and on an idle stream.
		{opHeaders, idNew, 0, 1, 0, 0, opWindow, idLast, 0, 0, 0, 0, opBarrier, opWindow, idNew, 0, 0, 1, 0, opWindow, idZero, 0, 0, 0, 0},
		// Connection-specific fields and a content-length that lies (§8.2.2, §8.1.1).
		{opHeaders, idNew, 0, 0, 2, 3, 7, 9, 0, opData, idLast, 1, 4, 0, opBarrier},
		// A header block split over CONTINUATION, with trailers, and one interrupted by a PING.
		{opHeaders, idNew, 2, 0, 1, 0, 0, opData, idLast, 0, 20, 0, opHeaders, idLast, 65, 1, 4, 0, opHeaders, idNew, 18, 0, 0, 0},
		// SETTINGS that shrink and overflow windows, with a stream open.
		{opHeaders, idNew, 0, 1, 0, 0, opSettings, 2, 4, 0, 0, 0, 0, 5, 0, 0, 0x40, 0, opWindow, idLast, 0x7f, 0xff, 0xff, 0xff, opSettings, 1, 4, 0x7f, 0xff, 0, 0},
		// A burst of opened and reset streams, then a client GOAWAY.
		{opBurst, 31, opGoAway, idLast, 0, opBarrier},
		// Streams beyond the concurrency limit, with bodies in flight.
		{opHeaders, idNew, 1, 1, 0, 0, opHeaders, idNew, 1, 1, 0, 0, opHeaders, idNew, 1, 1, 0, 0, opHeaders, idNew, 1, 1, 0, 0,
			opHeaders, idNew, 1, 1, 0, 0, opHeaders, idNew, 1, 1, 0, 0, opHeaders, idNew, 1, 1, 0, 0, opHeaders, idNew, 1, 1, 0, 0,
			opHeaders, idNew, 0, 1, 0, 0, opData, idLast, 0, 100, 0, opBarrier},
		// Unknown frame types, SETTINGS ACKs, PING ACKs, even and maximal stream ids.
		{opRaw, 11, 0xff, idLast, 2, 1, 2, opSettingsAck, opPing, 1, opHeaders, idEven, 1, 0, 0, 0},
		{opHeaders, idMax, 1, 0, 0, 0, opData, idOne, 0, 1, 0, opCont, idOne, 1, 0},
	}
}

// TestWriteFrameSequenceSeeds keeps testdata/fuzz/FuzzFrameSequence equal to seqSeeds: run with
// DETOUR_WRITE_SEEDS=1 after changing them.
func TestWriteFrameSequenceSeeds(t *testing.T) {
	dir := "testdata/fuzz/FuzzFrameSequence"
	for i, seed := range seqSeeds() {
		name := fmt.Sprintf("%s/seed-%02d", dir, i)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seed)
		if os.Getenv("DETOUR_WRITE_SEEDS") == "1" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(name, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(name)
		if err != nil || string(got) != want {
			t.Errorf("%s is not seed %d (run with DETOUR_WRITE_SEEDS=1): %v", name, i, err)
		}
	}
}
