package http1

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"sync"
	"time"
)

// upConn is one upstream connection. It is owned by one exchange at a time, or by the pool.
type upConn struct {
	nc     net.Conn
	addr   netip.AddrPort
	br     *bufio.Reader
	bw     *bufio.Writer
	dw     deadlineWriter
	idleAt time.Time
	reused bool       // it served an exchange before this one
	alive  *peerCheck // nil when the connection is not a socket
	gen    uint64     // the pool's generation when it was dialled
}

// pool keeps idle keep-alive upstream connections per endpoint, shared by all client
// connections. Idle connections are taken most recently used first (the warmest, and the least
// likely to have been closed by the upstream's own idle timeout) and swept by a timer.
type pool struct {
	cfg *Config

	mu    sync.Mutex
	idle  map[netip.AddrPort][]*upConn
	count int
	// gen counts Retire calls; retired holds, per retired address, the generation from which
	// its connections may be pooled again: at most maxRetired addresses, the most recent.
	gen     uint64
	retired map[netip.AddrPort]uint64
	sweep   *time.Timer // armed while count > 0
	closed  bool
}

func newPool(cfg *Config) *pool {
	return &pool{cfg: cfg, idle: make(map[netip.AddrPort][]*upConn)}
}

// get returns a pooled connection to addr that still looks alive, or dials a new one. fresh
// skips the pool (upgrades, retries).
func (p *pool) get(ctx context.Context, addr netip.AddrPort, fresh bool) (*upConn, error) {
	for !fresh {
		uc := p.take(addr)
		if uc == nil {
			break
		}
		// Bytes the upstream sent while the connection was idle, or a FIN, make it unusable.
		if uc.br.Buffered() == 0 && !uc.alive.peerClosed() {
			uc.reused = true
			return uc, nil
		}
		uc.nc.Close()
	}
	var nc net.Conn
	var gen uint64
	// A dial that spans a Retire of addr checked the peer against what it used to be: dial
	// again, once; a second Retire meanwhile is a flapping discovery, and the next dial wins.
	for try := 0; try < 2; try++ {
		p.mu.Lock()
		gen = p.gen
		p.mu.Unlock()
		dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
		var err error
		nc, err = p.cfg.Dial(dctx, addr)
		cancel()
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		stale := gen < p.retired[addr]
		p.mu.Unlock()
		if !stale || try == 1 {
			break
		}
		nc.Close()
	}
	uc := &upConn{nc: nc, addr: addr, br: bufio.NewReaderSize(nc, 4096), alive: newPeerCheck(nc), gen: gen}
	uc.dw = deadlineWriter{c: nc, timeout: p.cfg.WriteTimeout}
	uc.bw = bufio.NewWriterSize(&uc.dw, 4096)
	return uc, nil
}

func (p *pool) take(addr netip.AddrPort) *upConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[addr]
	if len(list) == 0 {
		return nil
	}
	uc := list[len(list)-1]
	list[len(list)-1] = nil
	p.idle[addr] = list[:len(list)-1]
	p.count--
	return uc
}

// put returns a connection that finished a complete exchange to the pool, or closes it.
func (p *pool) put(uc *upConn) {
	p.mu.Lock()
	list := p.idle[uc.addr]
	if p.closed || len(list) >= p.cfg.MaxIdlePerEndpoint || uc.gen < p.retired[uc.addr] {
		p.mu.Unlock()
		uc.nc.Close()
		return
	}
	uc.idleAt = time.Now()
	p.idle[uc.addr] = append(list, uc)
	p.count++
	if p.sweep == nil {
		p.sweep = time.AfterFunc(p.cfg.UpstreamIdleTimeout/2, p.sweepIdle)
	} else if p.count == 1 {
		p.sweep.Reset(p.cfg.UpstreamIdleTimeout / 2)
	}
	p.mu.Unlock()
}

// maxRetired bounds the addresses a pool remembers as retired.
const maxRetired = 4096

// retire closes the idle connections to addr and keeps those in use from returning to the pool.
func (p *pool) retire(addr netip.AddrPort) {
	p.mu.Lock()
	p.gen++
	if p.retired == nil {
		p.retired = make(map[netip.AddrPort]uint64)
	}
	p.retired[addr] = p.gen
	if len(p.retired) > maxRetired {
		// Forget the oldest half: a connection dialled before those retirements and still in
		// use after thousands more is the only one that could then return to the pool.
		cutoff := p.gen - maxRetired/2
		for a, g := range p.retired {
			if g <= cutoff {
				delete(p.retired, a)
			}
		}
	}
	list := p.idle[addr]
	delete(p.idle, addr)
	p.count -= len(list)
	p.mu.Unlock()
	for _, uc := range list {
		uc.nc.Close()
	}
}

// sweepIdle closes connections idle longer than UpstreamIdleTimeout; it runs on a timer while
// the pool holds connections.
func (p *pool) sweepIdle() {
	cutoff := time.Now().Add(-p.cfg.UpstreamIdleTimeout)
	var stale []*upConn
	p.mu.Lock()
	for addr, list := range p.idle {
		// Oldest first: put appends, take pops from the end.
		i := 0
		for i < len(list) && list[i].idleAt.Before(cutoff) {
			stale = append(stale, list[i])
			i++
		}
		if i == len(list) {
			delete(p.idle, addr)
		} else if i > 0 {
			p.idle[addr] = append(list[:0], list[i:]...)
			clear(list[len(list)-i:])
		}
		p.count -= i
	}
	if p.count > 0 && !p.closed {
		p.sweep.Reset(p.cfg.UpstreamIdleTimeout / 2)
	}
	p.mu.Unlock()
	for _, uc := range stale {
		uc.nc.Close()
	}
}

func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = make(map[netip.AddrPort][]*upConn)
	p.count = 0
	if p.sweep != nil {
		p.sweep.Stop()
	}
	p.mu.Unlock()
	for _, list := range idle {
		for _, uc := range list {
			uc.nc.Close()
		}
	}
}

// deadlineWriter gives every socket write a deadline of timeout from now, so a peer that stops
// reading cannot block a writer forever. It moves the deadline only when less than half of it is
// left, which keeps timer updates off the per-write path.
type deadlineWriter struct {
	c        net.Conn
	timeout  time.Duration
	deadline time.Time
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	now := time.Now()
	if w.deadline.Sub(now) < w.timeout/2 {
		w.deadline = now.Add(w.timeout)
		w.c.SetWriteDeadline(w.deadline)
	}
	return w.c.Write(p)
}
