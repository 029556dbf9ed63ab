package h2

import (
	"errors"
	"net"
	"sync"
	"time"
)

// The write path (see the package comment): frames are appended to the destination connection's
// output queue under its wmu, and whoever flushes writes the queue to the socket without ever
// waiting for it. What the socket does not take stays queued for the connection's own writer
// goroutine, which exists only while there is such a backlog. A raw TCP socket is tried with a
// non-blocking write; TLS over a socket rawsock wrapped is written through crypto/tls at once,
// and what the socket does not take of its records waits beneath it (rawsock.Defer). Any other
// connection cannot be tried without blocking, so its writer runs for every flush.
const (
	// maxQueuedData bounds the DATA a connection's output queue admits: past it, streams wait
	// on the connection's blocked list with their bytes in their own (flow-controlled) buffers,
	// as if the peer's connection window were closed, and the engine grants the source nothing
	// for them. So a peer that stops reading holds at most this much DATA here.
	maxQueuedData = 64 << 10
	// maxDataFrame caps the DATA frames the engine writes, whatever the peer's
	// SETTINGS_MAX_FRAME_SIZE, so one frame never takes more than a share of maxQueuedData.
	maxDataFrame = 16 << 10
	// maxQueued bounds everything a connection's output queue holds: DATA within maxQueuedData,
	// plus the frames no window limits (HEADERS, RST_STREAM, WINDOW_UPDATE, PING, SETTINGS,
	// GOAWAY), which a peer that stops reading makes pile up only as fast as it makes the engine
	// answer it. A connection whose queue grows past it is closed.
	maxQueued = 1 << 20
	// writeChunk is how much the writer hands the socket at once, so that its progress (what
	// the WriteTimeout watchdog measures) is seen at least every 16 KiB.
	writeChunk = 16 << 10
)

var errQueueOverflow = errors.New("output queue over its bound: the peer does not read")

// afterFlush is what to do with the socket once the output queue is empty.
type afterFlush uint8

const (
	afterNothing afterFlush = iota
	// afterCloseWrite half-closes the socket and gives the read loop a second to see the
	// peer's EOF (clientConn.shutdownWrite, lingerClose).
	afterCloseWrite
	afterClose // upConn.goAwayAndClose
)

// outQueue is a connection's output: frames not yet written to its socket. Guarded by the
// connection's wmu.
type outQueue struct {
	buf     []byte
	bufp    *[]byte // the pooled slice buf came from, nil if none
	writing int     // bytes the writer took out of buf and is writing now, without wmu
	writer  bool    // a writer goroutine owns the socket: nobody else writes to it
	after   afterFlush
	done    sync.Cond // broadcast when the writer exits
}

func (q *outQueue) init(mu *sync.Mutex) { q.done.L = mu }

// queued is every byte not yet written: appended, held by the writer, and (TLS) waiting beneath
// crypto/tls. The caller holds wmu.
func (c *conn) queued() int {
	n := len(c.out.buf) + c.out.writing
	if c.tq != nil {
		n += c.tq.Pending()
	}
	return n
}

// put appends p to the output queue. The caller holds wmu.
func (c *conn) put(p []byte) {
	q := &c.out
	if c.werr != nil {
		return // nothing more reaches this socket
	}
	if q.buf == nil {
		q.bufp = c.srv.bufs.get(bufSize)
		q.buf = (*q.bufp)[:0]
	}
	q.buf = append(q.buf, p...)
}

func (c *conn) putString(s string) {
	q := &c.out
	if c.werr != nil {
		return
	}
	if q.buf == nil {
		q.bufp = c.srv.bufs.get(bufSize)
		q.buf = (*q.bufp)[:0]
	}
	q.buf = append(q.buf, s...)
}

// recycle returns an output buffer that has been written to the pool, so that a connection
// with nothing to send holds none.
func (c *conn) recycle(buf []byte, bufp *[]byte) {
	if bufp != nil && cap(buf) == cap(*bufp) {
		*bufp = buf[:0]
		c.srv.bufs.put(bufp)
	}
}

// flushLocked writes the output queue to the socket as far as the socket takes it without
// waiting, and leaves the rest to the connection's writer goroutine, starting it if needed.
// It never blocks. The caller holds wmu.
func (c *conn) flushLocked() { c.writeLocked(false) }

// reserve makes room for n more bytes in the output buffer as a bufio.Writer would: if they do
// not fit, what is queued is written first, keeping the buffer. The caller holds wmu.
func (c *conn) reserve(n int) {
	q := &c.out
	if len(q.buf)+n > cap(q.buf) && len(q.buf) > 0 && !q.writer {
		c.writeLocked(true)
	}
}

// writeLocked is flushLocked; keep leaves the emptied buffer in place for more frames instead
// of returning it to the pool.
func (c *conn) writeLocked(keep bool) {
	q := &c.out
	if c.werr != nil {
		return
	}
	if n := c.queued(); n > maxQueued {
		c.srv.cfg.Logger.Info("closing connection: it does not read what the engine has for it",
			"remote", c.nc.RemoteAddr(), "queued", n, "bound", maxQueued)
		c.failWriteLocked(errQueueOverflow)
		return
	}
	if q.writer || (len(q.buf) == 0 && q.after == afterNothing) {
		return
	}
	switch {
	case c.tq != nil:
		// crypto/tls writes its records at once: what the socket does not take waits in tq.
		if len(q.buf) > 0 {
			if _, err := c.nc.Write(q.buf); err != nil {
				c.failWriteLocked(err)
				return
			}
			if keep {
				q.buf = q.buf[:0]
			} else {
				c.recycle(q.buf, q.bufp)
				q.buf, q.bufp = nil, nil
			}
		}
		if c.tq.Pending() == 0 {
			if q.after != afterNothing {
				c.runAfter(q.takeAfter()) // close_notify goes beneath TLS too: nothing waits
			}
			return
		}
	case c.raw != nil:
		n := 0
		if len(q.buf) > 0 {
			var err error
			if n, err = c.raw.TryWrite(q.buf); err != nil {
				c.failWriteLocked(err)
				return
			}
		}
		if n == len(q.buf) {
			// The fast path: the socket took everything.
			if keep {
				q.buf = q.buf[:0]
			} else {
				c.recycle(q.buf, q.bufp)
				q.buf, q.bufp = nil, nil
			}
			if q.after != afterNothing {
				c.runAfter(q.takeAfter()) // a raw socket's shutdown and close do not block
			}
			return
		}
		q.buf = q.buf[:copy(q.buf, q.buf[n:])]
	}
	if c.closed.Load() {
		c.werr = net.ErrClosed
		return
	}
	q.writer = true
	go c.writeLoop()
}

// failWriteLocked records a write error and closes the socket; the read loop sees it and
// cleans up. The caller holds wmu.
func (c *conn) failWriteLocked(err error) {
	if c.werr == nil {
		c.werr = err
	}
	c.out.buf = c.out.buf[:0]
	c.close()
}

// closeWhenFlushed makes the connection end once its output queue is written: closed, or
// half-closed (CloseWrite) with a second left for the read loop to see the peer's EOF.
func (c *conn) closeWhenFlushed(how afterFlush) {
	c.wmu.Lock()
	if how > c.out.after {
		c.out.after = how
	}
	c.flushLocked()
	werr := c.werr
	c.wmu.Unlock()
	if werr != nil {
		c.close()
	}
}

func (q *outQueue) takeAfter() afterFlush {
	how := q.after
	q.after = afterNothing
	return how
}

// runAfter ends the socket as how says, once the output queue is empty. The caller owns the
// socket: it holds wmu with no writer running (raw sockets), or it is the writer.
func (c *conn) runAfter(how afterFlush) {
	switch how {
	case afterClose:
		c.close()
	case afterCloseWrite:
		cw, ok := c.nc.(interface{ CloseWrite() error })
		if !ok || cw.CloseWrite() != nil {
			c.close()
			return
		}
		c.nc.SetReadDeadline(time.Now().Add(time.Second))
	}
}

// writeLoop is the connection's writer: it owns the socket while the output queue has a backlog
// (or, for a connection that cannot be tried without blocking, while it has anything), writes it
// with blocking writes, resumes the streams that waited for room in the queue, and exits once the
// queue is empty. It holds wmu only to take the queue, so other goroutines keep appending while
// it waits for the peer.
func (c *conn) writeLoop() {
	var fl flusher
	q := &c.out
	c.wmu.Lock()
	woke := false // the blocked streams were resumed and wrote nothing since
	for c.werr == nil {
		if len(q.buf) > 0 || (c.tq != nil && c.tq.Pending() > 0) {
			buf, bufp := q.buf, q.bufp
			q.buf, q.bufp = nil, nil
			q.writing = len(buf)
			c.wmu.Unlock()
			err := c.writeAll(buf)
			c.wmu.Lock()
			q.writing = 0
			c.recycle(buf, bufp)
			if err != nil {
				c.failWriteLocked(err)
			}
			woke = false
			continue
		}
		if len(c.blocked) > 0 && c.sendWindow > 0 && !woke {
			// The queue has room again: the streams that waited for it go on, from here.
			list := c.takeBlockedLocked()
			c.wmu.Unlock()
			c.drainAll(list, &fl)
			fl.flush() // this connection's own flush is a no-op: the loop writes what they added
			c.wmu.Lock()
			woke = true
			continue
		}
		if q.after != afterNothing {
			how := q.takeAfter()
			c.wmu.Unlock()
			c.runAfter(how) // a TLS close_notify is a write: not under wmu
			c.wmu.Lock()
			continue
		}
		break
	}
	q.writer = false
	c.stalled.Store(0)
	q.done.Broadcast()
	c.wmu.Unlock()
}

// writeAll writes p to the socket, waiting for it as long as it takes (the janitor closes a
// connection that makes no progress for WriteTimeout). Only the writer calls it.
func (c *conn) writeAll(p []byte) error {
	if c.tq != nil {
		if len(p) > 0 {
			if _, err := c.nc.Write(p); err != nil { // never waits: see tq
				return err
			}
		}
		for c.tq.Pending() > 0 {
			c.stalled.Store(c.srv.now())
			if err := c.tq.Drain(writeChunk); err != nil {
				return err
			}
		}
		return nil
	}
	for len(p) > 0 {
		n := min(len(p), writeChunk)
		c.stalled.Store(c.srv.now())
		var err error
		if c.raw != nil {
			_, err = c.raw.Write(p[:n])
		} else {
			_, err = c.nc.Write(p[:n])
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// waitWriter waits until the connection's writer, if any, has exited. The caller closed the
// socket first, so a writer waiting for the peer returns at once; after close no writer starts.
func (c *conn) waitWriter() {
	c.wmu.Lock()
	for c.out.writer {
		c.out.done.Wait()
	}
	c.wmu.Unlock()
}

// takeBlockedLocked empties the connection's blocked list for the caller to drain after
// unlocking. The caller holds wmu.
func (c *conn) takeBlockedLocked() []*stream {
	list := c.blocked
	c.blocked = nil
	for _, s := range list {
		c.sendHalf(s).inBlocked = false
	}
	return list
}
