// Package tap streams the requests a proxy serves to whoever watches them (`detour debug tap`,
// or curl on the admin port's /debug/tap), at no cost while nobody does: the data path reads one
// atomic counter per request and builds an event only when it is not zero. A watcher that reads
// slowly loses events, and is told how many, rather than slowing a single request: publishing
// never blocks and never grows a buffer beyond its fixed size.
package tap

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Event is one request as the proxy served it, published when it ended.
type Event struct {
	Time      time.Time // when the request's headers arrived
	Direction string    // "outbound" or "inbound"
	Protocol  string    // "http2" or "http1"
	Service   string    // the outbound destination's service; "" inbound
	Authority string    // :authority or Host
	Method    string
	Path      string // at most MaxPath bytes
	// GRPC marks a gRPC call (content-type application/grpc...); its method is Path without
	// the leading slash.
	GRPC       bool
	Status     int // HTTP status sent to the client; 0 if none
	GRPCStatus int // -1 if none
	Latency    time.Duration
	Endpoint   netip.AddrPort // where the request went: the picked endpoint, or the application
	// Peer is the identity mutual TLS proved: outbound the endpoint's, inbound the client's.
	Peer                string
	Client              netip.AddrPort // the client connection's address
	Dst                 netip.AddrPort // its original destination
	Error               string
	ReqBytes, RespBytes int64
}

// MaxPath bounds the path an event carries, so that a watcher's buffer is bounded in bytes and
// not only in events.
const MaxPath = 256

// Filter selects events. The zero Filter selects every event.
type Filter struct {
	// Service matches an event's service name, its authority (with or without the port) or its
	// original destination, as the user would type any of them.
	Service string
}

func (f Filter) match(e *Event) bool {
	if f.Service == "" {
		return true
	}
	if e.Service == f.Service || e.Authority == f.Service {
		return true
	}
	if host, _, ok := strings.Cut(e.Authority, ":"); ok && host == f.Service {
		return true
	}
	return e.Dst.IsValid() && e.Dst.String() == f.Service
}

// Buffer is how many events a watcher may fall behind before new ones are dropped.
const Buffer = 512

// MaxWatchers bounds the watchers of one proxy, and with Buffer and MaxPath the memory they hold.
const MaxWatchers = 8

// Hub hands published events to every watcher whose filter selects them. Its methods may be
// called from any goroutine; Publish and Active never block.
type Hub struct {
	n    atomic.Int32               // len(*subs), read by the data path
	subs atomic.Pointer[[]*Watcher] // immutable; replaced whole under mu
	mu   sync.Mutex
}

// Watcher is one subscription. Read its events from C; Close it when done.
type Watcher struct {
	C       <-chan Event
	ch      chan Event
	filter  Filter
	dropped atomic.Int64
	hub     *Hub
	once    sync.Once
}

// Active reports whether anyone watches. The data path calls it for every request, so it is one
// atomic load; only when it is true does the caller build an Event.
func (h *Hub) Active() bool { return h.n.Load() > 0 }

// Watch subscribes with filter f; it returns nil when MaxWatchers already watch.
func (h *Hub) Watch(f Filter) *Watcher {
	h.mu.Lock()
	defer h.mu.Unlock()
	var cur []*Watcher
	if p := h.subs.Load(); p != nil {
		cur = *p
	}
	if len(cur) >= MaxWatchers {
		return nil
	}
	w := &Watcher{ch: make(chan Event, Buffer), filter: f, hub: h}
	w.C = w.ch
	next := append(append(make([]*Watcher, 0, len(cur)+1), cur...), w)
	h.subs.Store(&next)
	h.n.Store(int32(len(next)))
	return w
}

// Close ends the subscription; events already buffered stay readable.
func (w *Watcher) Close() {
	w.once.Do(func() {
		h := w.hub
		h.mu.Lock()
		defer h.mu.Unlock()
		cur := *h.subs.Load()
		next := make([]*Watcher, 0, len(cur))
		for _, s := range cur {
			if s != w {
				next = append(next, s)
			}
		}
		h.subs.Store(&next)
		h.n.Store(int32(len(next)))
	})
}

// Dropped is how many events this watcher lost because its buffer was full.
func (w *Watcher) Dropped() int64 { return w.dropped.Load() }

// Publish hands e to every watcher that selects it, dropping it (and counting the drop) for a
// watcher whose buffer is full.
func (h *Hub) Publish(e Event) {
	p := h.subs.Load()
	if p == nil {
		return
	}
	if len(e.Path) > MaxPath {
		// A copy, so the event does not pin the whole decoded header block.
		e.Path = strings.Clone(e.Path[:MaxPath])
	}
	for _, w := range *p {
		if !w.filter.match(&e) {
			continue
		}
		select {
		case w.ch <- e:
		default:
			w.dropped.Add(1)
		}
	}
}
