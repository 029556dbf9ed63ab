package kubecluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/detourmesh/detour/netns"
)

// relay makes the API server of a node cluster, which listens in the node's namespace,
// reachable on the root namespace's loopback (for tests, kubectl and `make cluster`'s
// user), like `kubectl port-forward` the other way round: each connection accepted on the
// loopback is dialled again from inside the namespace. Nothing of the cluster's routes in or
// out of the namespace.
type relay struct {
	ln     net.Listener
	ns     *netns.NS
	target string

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startRelay(listen string, ns *netns.NS, target string) (*relay, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("relaying the API server: %w", err)
	}
	r := &relay{ln: ln, ns: ns, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return // closed
		}
		r.wg.Add(1)
		go r.pipe(c)
	}
}

func (r *relay) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		return false // closing
	}
	if add {
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
	return true
}

func (r *relay) pipe(down net.Conn) {
	defer r.wg.Done()
	defer down.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	up, err := r.ns.DialContext(ctx, "tcp", r.target)
	cancel()
	if err != nil {
		return
	}
	defer up.Close()
	if !r.track(down, true) || !r.track(up, true) {
		return
	}
	defer r.track(down, false)
	defer r.track(up, false)
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, down); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(down, up); down.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// close stops accepting, ends every relayed connection and waits for their goroutines.
func (r *relay) close() {
	r.ln.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
}
