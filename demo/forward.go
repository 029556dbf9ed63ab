package demo

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"

	"github.com/detourmesh/detour/netns"
)

// forwarder relays connections from a loopback port of the host into a namespace (the node's,
// or a pod's, where it connects to the pod's loopback as kubectl port-forward does), towards a
// pod: what `kubectl port-forward` is to a cluster. Its listener is the only thing the demo
// opens in the root namespace, and only on loopback.
type forwarder struct {
	addr  netip.AddrPort
	label string
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func newForwarder(at netip.AddrPort, via *netns.NS, to netip.AddrPort) (*forwarder, error) {
	ln, err := net.Listen("tcp", at.String())
	if err != nil {
		return nil, err
	}
	f := &forwarder{addr: ln.Addr().(*net.TCPAddr).AddrPort(), ln: ln, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.relay(c, via, to)
			}()
		}
	}()
	return f, nil
}

func (f *forwarder) track(c net.Conn, open bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if open {
		f.conns[c] = true
	} else {
		delete(f.conns, c)
	}
}

func (f *forwarder) relay(c net.Conn, via *netns.NS, to netip.AddrPort) {
	defer c.Close()
	up, err := via.DialContext(context.Background(), "tcp", to.String())
	if err != nil {
		return
	}
	defer up.Close()
	f.track(c, true)
	f.track(up, true)
	defer f.track(c, false)
	defer f.track(up, false)
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

func (f *forwarder) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
