package proxy

import (
	"cmp"
	"net"
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
	// Closed is set on the connections of ?closed=1 that have ended.
	Closed *time.Time `json:"closed,omitempty"`
	// Bytes the kernel counted on the client's socket: received from the client, and sent to it
	// and acknowledged. Open connections only.
	BytesReceived uint64 `json:"bytes_received"`
	BytesSent     uint64 `json:"bytes_sent"`
	// Endpoints are where the connection's requests went (HTTP/2 streams), with how many each.
	Endpoints []endpointUse `json:"endpoints,omitempty"`
}

// endpointUse counts the requests of one connection sent to one endpoint.
type endpointUse struct {
	Address  string `json:"address"`
	Requests int64  `json:"requests"`
}

// maxConnEndpoints bounds the endpoints remembered per connection; requests to more are
// counted under the last entry's address "other".
const maxConnEndpoints = 32

// connInfo is the live record of a connection.
type connInfo struct {
	doc      connDoc // fixed at accept, but for Protocol
	protocol atomic.Pointer[string]
	peer     atomic.Pointer[string]
	conn     *net.TCPConn
	client   netip.AddrPort

	// endpoints counts the connection's requests per endpoint. Counting is on the data path
	// (every HTTP/2 stream), so it takes no lock: the list is replaced, under mu, only when a
	// new endpoint appears, which a connection's first requests to each endpoint do.
	endpoints atomic.Pointer[[]*endpointCount]
	other     atomic.Int64 // requests to endpoints beyond maxConnEndpoints
	mu        sync.Mutex
}

type endpointCount struct {
	addr netip.AddrPort
	n    atomic.Int64
}

// sentTo counts one request of the connection sent to addr.
func (c *connInfo) sentTo(addr netip.AddrPort) {
	if l := c.endpoints.Load(); l != nil {
		for _, e := range *l {
			if e.addr == addr {
				e.n.Add(1)
				return
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var cur []*endpointCount
	if l := c.endpoints.Load(); l != nil {
		cur = *l
	}
	for _, e := range cur {
		if e.addr == addr { // added meanwhile
			e.n.Add(1)
			return
		}
	}
	if len(cur) >= maxConnEndpoints {
		c.other.Add(1)
		return
	}
	e := &endpointCount{addr: addr}
	e.n.Store(1)
	next := append(append(make([]*endpointCount, 0, len(cur)+1), cur...), e)
	c.endpoints.Store(&next)
}

func (c *connInfo) endpointDocs() []endpointUse {
	var cur []*endpointCount
	if l := c.endpoints.Load(); l != nil {
		cur = *l
	}
	other := c.other.Load()
	if len(cur) == 0 && other == 0 {
		return nil
	}
	out := make([]endpointUse, 0, len(cur)+1)
	for _, e := range cur {
		out = append(out, endpointUse{Address: e.addr.String(), Requests: e.n.Load()})
	}
	slices.SortFunc(out, func(a, b endpointUse) int { return cmp.Compare(a.Address, b.Address) })
	if other > 0 {
		out = append(out, endpointUse{Address: "other", Requests: other})
	}
	return out
}

// recentClosed is how many ended connections /debug/connections?closed=1 remembers: enough for
// `detour debug check` to find its own probe connections, which a proxy may end at once.
const recentClosed = 64

// connTable tracks open client connections, and the last few that closed.
type connTable struct {
	next  atomic.Uint64
	mu    sync.Mutex
	conns map[uint64]*connInfo
	// closed is a ring of the last recentClosed connections to end; closedN counts every one.
	closed  [recentClosed]connDoc
	closedN uint64
}

func newConnTable() *connTable { return &connTable{conns: map[uint64]*connInfo{}} }

func (t *connTable) add(conn *net.TCPConn, direction string, client, dst netip.AddrPort, service string) *connInfo {
	c := &connInfo{conn: conn, client: client, doc: connDoc{ID: t.next.Add(1), Direction: direction, Client: client.String(),
		Dst: dst.String(), Service: service, Since: time.Now()}}
	t.mu.Lock()
	t.conns[c.doc.ID] = c
	t.mu.Unlock()
	return c
}

func (c *connInfo) setProtocol(p string) { c.protocol.Store(&p) }
func (c *connInfo) setPeer(id string)    { c.peer.Store(&id) }

// snapshot is the connection's document without the kernel's byte counts.
func (c *connInfo) snapshot() connDoc {
	d := c.doc
	d.Protocol = "detecting"
	if id := c.peer.Load(); id != nil {
		d.Peer = *id
	}
	if p := c.protocol.Load(); p != nil {
		d.Protocol = *p
	}
	d.Endpoints = c.endpointDocs()
	return d
}

func (t *connTable) remove(c *connInfo) {
	d := c.snapshot()
	now := time.Now()
	d.Closed = &now
	t.mu.Lock()
	delete(t.conns, c.doc.ID)
	t.closed[t.closedN%recentClosed] = d
	t.closedN++
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

// doc is /debug/connections: the open connections and, with closed, the last ones that ended.
func (t *connTable) doc(closed bool) []connDoc {
	t.mu.Lock()
	open := make([]*connInfo, 0, len(t.conns))
	for _, c := range t.conns {
		open = append(open, c)
	}
	var ended []connDoc
	if closed {
		n := min(t.closedN, recentClosed)
		for i := range n {
			ended = append(ended, t.closed[(t.closedN-n+i)%recentClosed])
		}
	}
	t.mu.Unlock()
	out := make([]connDoc, 0, len(open)+len(ended))
	for _, c := range open {
		d := c.snapshot()
		d.BytesReceived, d.BytesSent = socketBytes(c.conn)
		out = append(out, d)
	}
	out = append(out, ended...)
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
