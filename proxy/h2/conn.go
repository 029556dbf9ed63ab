package h2

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/detourmesh/detour/proxy/rawsock"
	"golang.org/x/net/http2/hpack"
)

const (
	bufSize         = 32 << 10 // pooled read and write buffers; output is written once this much is queued
	defaultWindow   = 65535    // RFC 9113 §6.9.2 initial window before SETTINGS
	defaultMaxFrame = 16384    // RFC 9113 §4.2
	maxWindow       = 1<<31 - 1
	clientPreface   = http2.ClientPreface
	// maxBatch bounds the frames a read loop handles before flushing what it wrote, so a peer
	// that never lets its input drain cannot hold back other streams' frames.
	maxBatch = 32
)

// conn is the part shared by client and upstream connections: the read side (used only by the
// connection's read goroutine) and the write side (used by any goroutine under wmu; see out.go).
type conn struct {
	srv *Server
	nc  net.Conn
	raw rawsock.Writer // nc's raw writer; nil when nc is not a plain TCP socket (TLS)
	// tq, for TLS over a socket rawsock wrapped, holds the records that socket did not take:
	// its writes never wait (rawsock.Defer), so nc.Write is as good as a try-write.
	tq     rawsock.Deferred
	rd     reader        // read side only
	fr     *http2.Framer // read side only, reads through rd
	client bool          // downstream connection: its blocked streams wait on their resp half

	// mu guards the connection's stream map (in clientConn / upConn). Lock order: stream.mu,
	// then mu, then wmu.
	mu      sync.Mutex
	streams map[uint32]*stream // by this connection's stream id; guarded by mu

	wmu            sync.Mutex
	out            outQueue // frames not yet written to the socket; guarded by wmu
	enc            *hpack.Encoder
	encBuf         bytes.Buffer
	hbuf           [9]byte
	sendWindow     int32     // connection-level window the peer granted us
	peerInitWindow int32     // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame   int32     // peer's SETTINGS_MAX_FRAME_SIZE
	blocked        []*stream // streams waiting on sendWindow or on room in out
	werr           error

	recvAvail      atomic.Int32 // connection-level bytes the peer may still send us
	grantPending   atomic.Int32 // bytes forwarded but not yet granted back at connection level
	grantThreshold int32

	// stalled is the srv clock since when the connection's writer has been waiting for the socket
	// to take more bytes without progress, 0 if it is not waiting (Server.janitor closes a
	// connection stalled longer than WriteTimeout).
	stalled   atomic.Int64
	lastRead  atomic.Int64 // srv clock of the last frame read
	closed    atomic.Bool
	closeOnce sync.Once
}

func (c *conn) init(srv *Server, nc net.Conn, client bool) {
	c.srv = srv
	c.nc = nc
	c.client = client
	var rr rawsock.Reader
	if r, w, ok := rawsock.IO(nc); ok {
		rr, c.raw = r, w
	} else if tc, ok := nc.(interface{ NetConn() net.Conn }); ok {
		c.tq, _ = rawsock.Defer(tc.NetConn())
	}
	c.out.init(&c.wmu)
	c.rd.init(srv, rr, nc)
	c.fr = http2.NewFramer(nil, &c.rd)
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(defaultMaxFrame)
	c.enc = hpack.NewEncoder(&c.encBuf)
	c.sendWindow = defaultWindow
	c.peerInitWindow = defaultWindow
	c.peerMaxFrame = defaultMaxFrame
	c.recvAvail.Store(int32(srv.cfg.ConnWindow))
	c.grantThreshold = int32(srv.cfg.ConnWindow / 4)
	c.lastRead.Store(srv.now())
}

// close closes the socket; a writer parked on it returns, and the read loop sees the error and
// cleans up. It may be called with any lock held.
func (c *conn) close() {
	c.closed.Store(true)
	c.closeOnce.Do(func() { c.nc.Close() })
}

// inputDrained reports whether the next ReadFrame would block on the socket: the reader holds no
// complete frame. That is when a read loop flushes what it wrote.
func (c *conn) inputDrained() bool {
	n, ok := c.rd.frameLen()
	return !ok || c.rd.buffered() < 9+n
}

func (c *conn) flush() {
	c.wmu.Lock()
	c.flushLocked()
	c.wmu.Unlock()
}

// flusher remembers the connections a goroutine wrote to, so it can flush them once it has
// nothing more to forward (batching writes into one syscall per connection).
type flusher struct{ conns []*conn }

func (f *flusher) add(c *conn) {
	for _, x := range f.conns {
		if x == c {
			return
		}
	}
	f.conns = append(f.conns, c)
}

func (f *flusher) flush() {
	for i, c := range f.conns {
		c.flush()
		f.conns[i] = nil
	}
	f.conns = f.conns[:0]
}

// Frame writers. The caller holds wmu. They append to the output queue; a write error is sticky
// in werr and the bytes are dropped.

func (c *conn) frameHeader(length int, t http2.FrameType, flags http2.Flags, id uint32) {
	c.reserve(9 + length)
	b := c.hbuf[:]
	b[0], b[1], b[2] = byte(length>>16), byte(length>>8), byte(length)
	b[3], b[4] = byte(t), byte(flags)
	binary.BigEndian.PutUint32(b[5:], id&maxWindow)
	c.put(b)
}

func (c *conn) frameData(id uint32, end bool, p []byte) {
	var fl http2.Flags
	if end {
		fl = http2.FlagDataEndStream
	}
	c.frameHeader(len(p), http2.FrameData, fl, id)
	c.put(p)
}

func (c *conn) frameRST(id uint32, code http2.ErrCode) {
	c.frameHeader(4, http2.FrameRSTStream, 0, id)
	binary.BigEndian.PutUint32(c.hbuf[:4], uint32(code))
	c.put(c.hbuf[:4])
}

func (c *conn) frameWindowUpdate(id, n uint32) {
	c.frameHeader(4, http2.FrameWindowUpdate, 0, id)
	binary.BigEndian.PutUint32(c.hbuf[:4], n&maxWindow)
	c.put(c.hbuf[:4])
}

func (c *conn) framePing(ack bool, data [8]byte) {
	var fl http2.Flags
	if ack {
		fl = http2.FlagPingAck
	}
	c.frameHeader(8, http2.FramePing, fl, 0)
	c.put(data[:])
}

func (c *conn) frameSettings(ss ...http2.Setting) {
	c.frameHeader(6*len(ss), http2.FrameSettings, 0, 0)
	for _, s := range ss {
		binary.BigEndian.PutUint16(c.hbuf[:2], uint16(s.ID))
		binary.BigEndian.PutUint32(c.hbuf[2:6], s.Val)
		c.put(c.hbuf[:6])
	}
}

func (c *conn) frameSettingsAck() { c.frameHeader(0, http2.FrameSettings, http2.FlagSettingsAck, 0) }

func (c *conn) frameGoAway(last uint32, code http2.ErrCode, debug string) {
	c.frameHeader(8+len(debug), http2.FrameGoAway, 0, 0)
	binary.BigEndian.PutUint32(c.hbuf[:4], last&maxWindow)
	binary.BigEndian.PutUint32(c.hbuf[4:8], uint32(code))
	c.put(c.hbuf[:8])
	c.putString(debug)
}

// encField adds one field to the header block being built in encBuf.
func (c *conn) encField(name, value string, sensitive bool) {
	c.enc.WriteField(hpack.HeaderField{Name: name, Value: value, Sensitive: sensitive})
}

// frameHeaderBlock writes encBuf as HEADERS plus CONTINUATION frames and resets encBuf.
func (c *conn) frameHeaderBlock(id uint32, end bool) {
	b := c.encBuf.Bytes()
	first := true
	for first || len(b) > 0 {
		n := min(len(b), int(c.peerMaxFrame))
		var fl http2.Flags
		if n == len(b) {
			fl |= http2.FlagHeadersEndHeaders
		}
		t := http2.FrameContinuation
		if first {
			t = http2.FrameHeaders
			if end {
				fl |= http2.FlagHeadersEndStream
			}
		}
		c.frameHeader(n, t, fl, id)
		c.put(b[:n])
		b = b[n:]
		first = false
	}
	c.encBuf.Reset()
}

// encFields adds regular fields to the header block being built, but for any named drop (the
// caller holds wmu).
func (c *conn) encFields(fs []hpack.HeaderField, drop string) {
	for i := range fs {
		f := fs[i]
		if f.Name == drop {
			continue
		}
		switch f.Name {
		case "grpc-timeout", "content-length":
			// Different on nearly every request: indexing them would only evict the fields
			// that do repeat from the 4 KiB dynamic table.
			f.Sensitive = true
		}
		c.enc.WriteField(f)
	}
}

// encRetryFields is encFields for a retried gRPC request: grpc-timeout, if the request has one,
// becomes left, the time its deadline leaves (the caller holds wmu).
func (c *conn) encRetryFields(fs []hpack.HeaderField, left time.Duration, drop string) {
	for i := range fs {
		if fs[i].Name == "grpc-timeout" {
			c.encField("grpc-timeout", formatGRPCTimeout(max(left, time.Nanosecond)), true)
			continue
		}
		c.encFields(fs[i:i+1], drop)
	}
}

// grantConn returns n forwarded bytes to the peer's connection-level window, batching
// WINDOW_UPDATE frames to a quarter of the window.
func (c *conn) grantConn(n int32, fl *flusher) {
	if n <= 0 {
		return
	}
	v := c.grantPending.Add(n)
	if v < c.grantThreshold || !c.grantPending.CompareAndSwap(v, 0) {
		return
	}
	c.recvAvail.Add(v)
	c.wmu.Lock()
	c.frameWindowUpdate(0, uint32(v))
	c.wmu.Unlock()
	fl.add(c)
}

// connError is a connection error the engine decided on (beyond the Framer's own).
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return "http2: connection error: " + e.code.String() + ": " + e.reason
}

// bufPool hands out per-stream buffers in a few size classes, as *[]byte so Put does not allocate.
type bufPool struct{ classes [4]sync.Pool }

var bufClasses = [4]int{4 << 10, 32 << 10, 256 << 10, 2 << 20}

func (p *bufPool) get(n int) *[]byte {
	for i, size := range bufClasses {
		if n <= size {
			if b, ok := p.classes[i].Get().(*[]byte); ok {
				return b
			}
			b := make([]byte, 0, size)
			return &b
		}
	}
	b := make([]byte, 0, n)
	return &b
}

func (p *bufPool) put(b *[]byte) {
	for i, size := range bufClasses {
		if cap(*b) == size {
			*b = (*b)[:0]
			p.classes[i].Put(b)
			return
		}
	}
}
