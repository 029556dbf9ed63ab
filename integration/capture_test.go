package integration

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/detourmesh/detour/netns"
)

// capture records every frame crossing a link of a namespace, like tcpdump -i, with a raw
// AF_PACKET socket. It exists so tests can check what is and is not visible on the wire.
type capture struct {
	fd     int
	quit   atomic.Bool
	mu     sync.Mutex
	frames bytes.Buffer
	done   chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startCapture captures on every link of ns until stop. On the node namespace that means
// every pod's veth: frames bridged between two pods never pass the bridge device itself.
func startCapture(t *testing.T, ns *netns.NS) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{})}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		// A read timeout lets the reader notice stop: closing the socket does not wake it.
		tv := unix.Timeval{Usec: 50000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL)})
	})
	if err != nil {
		t.Fatalf("capturing in %s: %v", ns.Name, err)
	}
	go func() {
		defer close(c.done)
		buf := make([]byte, 1<<16)
		for !c.quit.Load() {
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			c.mu.Lock()
			c.frames.Write(buf[:n])
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.stop() })
	return c
}

// stop ends the capture and returns every byte seen.
func (c *capture) stop() []byte {
	if !c.quit.Swap(true) {
		<-c.done
		unix.Close(c.fd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames.Bytes()
}

// saw reports whether marker has crossed the link so far.
func (c *capture) saw(marker []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Contains(c.frames.Bytes(), marker)
}
