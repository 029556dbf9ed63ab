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

	mu        sync.Mutex // guards endpoints and other
	endpoints map[netip.AddrPort]int64
	other     int64
}

// sentTo counts one request of the connection sent to addr. The HTTP/2 engine calls it from the
// connection's read loop, so the lock is uncontended but for /debug/connections.
func (c *connInfo) sentTo(addr netip.AddrPort) {
	c.mu.Lock()
	switch _, known := c.endpoints[addr]; {
	case known:
		c.endpoints[addr]++
	case len(c.endpoints) >= maxConnEndpoints:
		c.other++
	default:
		if c.endpoints == nil {
			c.endpoints = map[netip.AddrPort]int64{}
		}
		c.endpoints[addr] = 1
	}
	c.mu.Unlock()
}

func (c *connInfo) endpointDocs() []endpointUse {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.endpoints) == 0 && c.other == 0 {
		return nil
	}
	out := make([]endpointUse, 0, len(c.endpoints)+1)
	for a, n := range c.endpoints {
		out = append(out, endpointUse{Address: a.String(), Requests: n})
	}
	slices.SortFunc(out, func(a, b endpointUse) int { return cmp.Compare(a.Address, b.Address) })
	if c.other > 0 {
		out = append(out, endpointUse{Address: "other", Requests: c.other})
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
