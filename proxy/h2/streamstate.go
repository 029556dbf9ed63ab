package h2

import (
	"golang.org/x/net/http2"
)

// What a client connection remembers about streams that are no longer open, to answer frames on
// them as RFC 9113 §5.1 and §5.1.1 require.
//
// A client stream id at or below the highest one opened (clientConn.maxID) and not in the stream
// map is closed, and a frame on it is answered by how it closed:
//
//   - closed by the client (it sent END_STREAM, or RST_STREAM) or never opened (the client
//     skipped the id, §5.1.1): the client knows the stream is closed, so DATA or HEADERS on it is
//     its error, a stream error STREAM_CLOSED (§5.1 "half-closed (remote)" and "closed", §6.1);
//     HEADERS on a skipped id is a new stream below an earlier one, a connection error
//     PROTOCOL_ERROR (§5.1.1).
//   - closed by the engine's RST_STREAM while the client could still send (a refused or
//     malformed request, an upstream failure, a response that ended before the request): frames
//     the client sent before it saw the reset are still arriving, and §5.1 requires them to be
//     minimally processed (HPACK decoded, DATA counted against the connection window) and
//     discarded.
//
// WINDOW_UPDATE, PRIORITY and RST_STREAM on a closed stream are ignored whichever way it closed
// (§5.1 allows them in the race after END_STREAM or RST_STREAM).
//
// Memory is bounded: the engine remembers the last maxResetMemory streams it reset while the
// client could still send, and the last maxSkipMemory ranges of skipped ids; nothing for streams
// that closed normally, the usual case. A stream the engine reset that has fallen out of memory
// is treated as closed by the client: a frame still in flight for it (more than maxResetMemory
// resets ago) gets RST_STREAM STREAM_CLOSED, which the client ignores. A skipped range that
// has fallen out of memory is treated as opened-and-closed: HEADERS on it gets STREAM_CLOSED
// instead of a connection error. Both degrade to an answer that is still an error, never to
// serving a stream the RFC forbids.
const (
	maxResetMemory = 64
	maxSkipMemory  = 16
)

type closedStreams struct {
	reset   []uint32 // ring of ids the engine reset while the client could send; lazily allocated
	next    int
	skipped []idRange // oldest first
}

type idRange struct{ lo, hi uint32 }

// closedBy is how a closed stream closed, as far as what the client may still send on it.
type closedBy int

const (
	closedByClient closedBy = iota // the client ended or reset it: its frames on it are errors
	closedByEngine                 // the engine reset it while the client could send: discard
	neverOpened                    // the client skipped this id (§5.1.1)
)

// resetByEngine records that the engine reset stream id while the client could still send.
func (m *closedStreams) resetByEngine(id uint32) {
	if len(m.reset) < maxResetMemory {
		m.reset = append(m.reset, id)
		return
	}
	m.reset[m.next] = id
	m.next = (m.next + 1) % maxResetMemory
}

// skip records that the client skipped ids lo..hi when it opened a higher one.
func (m *closedStreams) skip(lo, hi uint32) {
	if len(m.skipped) == maxSkipMemory {
		m.skipped = append(m.skipped[:0], m.skipped[1:]...)
	}
	m.skipped = append(m.skipped, idRange{lo, hi})
}

// how says how closed stream id closed.
func (m *closedStreams) how(id uint32) closedBy {
	for _, r := range m.reset {
		if r == id {
			return closedByEngine
		}
	}
	for _, r := range m.skipped {
		if r.lo <= id && id <= r.hi {
			return neverOpened
		}
	}
	return closedByClient
}

// opened records a new stream id above maxID (the caller holds cc.mu): ids skipped between the
// previous one and id are closed (§5.1.1).
func (cc *clientConn) openedLocked(id uint32) {
	next := uint32(1)
	if cc.maxID > 0 {
		next = cc.maxID + 2
	}
	if id > next {
		cc.closed.skip(next, id-2)
	}
	cc.maxID = id
}

// resetWhileOpen records that the engine reset stream id at its opening, before the client
// ended it: what the client still sends on it is discarded (§5.1 "closed").
func (cc *clientConn) resetWhileOpen(id uint32, clientEnded bool) {
	if clientEnded {
		return
	}
	cc.mu.Lock()
	cc.closed.resetByEngine(id)
	cc.mu.Unlock()
}

// closedState reports how closed stream id (at most maxID, not in the stream map) closed.
func (cc *clientConn) closedState(id uint32) closedBy {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.closed.how(id)
}

// streamClosed answers a frame the client sent on a stream it knows is closed: a stream error
// STREAM_CLOSED (RFC 9113 §5.1, §6.1), charged to the same budget as other resets the client
// causes so that a stream of such frames cannot make the engine write without bound.
func (cc *clientConn) streamClosed(id uint32) error {
	cc.rst(id, http2.ErrCodeStreamClosed)
	if !cc.takeResetToken() {
		return connError{http2.ErrCodeEnhanceYourCalm, "too many frames on closed streams"}
	}
	return nil
}

// onPriority applies RFC 9113 §5.3.1 to a PRIORITY frame: a stream cannot depend on itself, a
// stream error PROTOCOL_ERROR. On an idle stream it is a connection error instead (§5.4.1 allows
// it): RST_STREAM must not be sent on an idle stream (§6.4), and a stream reset before it opened
// would leave its later HEADERS without a valid answer. Priorities are otherwise ignored: a
// forwarder has no use for them (§5.3.2 deprecates them).
func (cc *clientConn) onPriority(f *http2.PriorityFrame) error {
	if f.StreamDep != f.StreamID {
		return nil
	}
	id := f.StreamID
	if id > cc.maxID {
		return connError{http2.ErrCodeProtocol, "PRIORITY makes an idle stream depend on itself"}
	}
	if cc.lookup(id) == nil {
		return nil // closed: it already had its last RST_STREAM (§5.4.2)
	}
	cc.streamError(id, http2.ErrCodeProtocol)
	if !cc.takeResetToken() {
		return connError{http2.ErrCodeEnhanceYourCalm, "too many stream errors"}
	}
	return nil
}

// neverOpened reports whether id names a stream the engine never opened on u, so a frame other
// than PRIORITY on it is a connection error PROTOCOL_ERROR (RFC 9113 §5.1 "idle"). Even ids are
// server-initiated, and the engine disables push (§8.4), so none is ever opened.
func (u *upConn) neverOpened(id uint32) bool {
	if id%2 == 0 {
		return true
	}
	u.wmu.Lock()
	next := u.nextID
	u.wmu.Unlock()
	return id >= next
}

// errIdle is the connection error for a frame on a stream the engine never opened.
func errIdle(what string) error {
	return connError{http2.ErrCodeProtocol, what + " on an idle stream"}
}
