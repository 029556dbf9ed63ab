package proxy

import (
	"cmp"
	"io"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// connDoc is one client connection the proxy holds, as /debug/connections shows it.
type connDoc struct {
	ID        uint64    `json:"id"`
	Direction string    `json:"direction"`
	Client    string    `json:"client"`
	Dst       string    `json:"original_destination"`
	Service   string    `json:"service,omitempty"`
	Protocol  string    `json:"protocol"`
	Peer      string    `json:"peer_identity,omitempty"` // a meshed client's proven identity
	Since     time.Time `json:"since"`
}

// connInfo is the live record of a connection.
type connInfo struct {
	doc      connDoc // fixed at accept, but for Protocol
	protocol atomic.Pointer[string]
	peer     atomic.Pointer[string]
	conn     io.Closer
}

// connTable tracks open client connections.
type connTable struct {
	next  atomic.Uint64
	mu    sync.Mutex
	conns map[uint64]*connInfo
}

func newConnTable() *connTable { return &connTable{conns: map[uint64]*connInfo{}} }

func (t *connTable) add(conn io.Closer, direction string, client, dst netip.AddrPort, service string) *connInfo {
	c := &connInfo{conn: conn, doc: connDoc{ID: t.next.Add(1), Direction: direction, Client: client.String(),
		Dst: dst.String(), Service: service, Since: time.Now()}}
	t.mu.Lock()
	t.conns[c.doc.ID] = c
	t.mu.Unlock()
	return c
}

func (c *connInfo) setProtocol(p string) { c.protocol.Store(&p) }
func (c *connInfo) setPeer(id string)    { c.peer.Store(&id) }

func (t *connTable) remove(c *connInfo) {
	t.mu.Lock()
	delete(t.conns, c.doc.ID)
	t.mu.Unlock()
}

// closeAll closes every connection still open: the end of a drain.
func (t *connTable) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.conns {
		c.conn.Close()
	}
}

func (t *connTable) doc() []connDoc {
	t.mu.Lock()
	out := make([]connDoc, 0, len(t.conns))
	for _, c := range t.conns {
		d := c.doc
		d.Protocol = "detecting"
		if id := c.peer.Load(); id != nil {
			d.Peer = *id
		}
		if p := c.protocol.Load(); p != nil {
			d.Protocol = *p
		}
		out = append(out, d)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b connDoc) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// liveConns counts the client connections being served, both directions, from accept to the
// end of their handler, and says when none is left: a drain ends then rather than at its
// timeout.
type liveConns struct {
	mu   sync.Mutex
	n    int
	none chan struct{} // closed while n == 0
}

func newLiveConns() *liveConns {
	l := &liveConns{none: make(chan struct{})}
	close(l.none)
	return l
}

// tryAdd counts a new connection unless max are already served.
func (l *liveConns) tryAdd(max int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n >= max {
		return false
	}
	if l.n == 0 {
		l.none = make(chan struct{})
	}
	l.n++
	return true
}

func (l *liveConns) done() {
	l.mu.Lock()
	l.n--
	if l.n == 0 {
		close(l.none)
	}
	l.mu.Unlock()
}

// idle returns a channel closed once no connection is served (already closed if none is now).
// A connection accepted after it closed gets a new one from the next call.
func (l *liveConns) idle() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.none
}

func (l *liveConns) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}
