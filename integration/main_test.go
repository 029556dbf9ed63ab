// Package integration holds Detour's end-to-end tests: the real detour binary, real iptables
// and real kernels, in network namespaces the tests build and remove. They need root; in CI
// (DETOUR_REQUIRE_ROOT=1) they fail rather than skip.
package integration

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/proxy/origdst"
)

// detourBin is the binary under test: $DETOUR_BIN, or one built for this run; controllerBin is
// detour-controller beside it.
var detourBin, controllerBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	detourBin = os.Getenv("DETOUR_BIN")
	if detourBin == "" {
		dir, err := os.MkdirTemp("", "detour-integration-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		// Tests run the binary as other users too.
		if err := os.Chmod(dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		detourBin = filepath.Join(dir, "detour")
		// The demo finds stockdata and stockweb beside detour.
		build := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", dir+"/", "../cmd/detour", "../cmd/detour-controller",
			"../examples/stockkube/cmd/stockdata", "../examples/stockkube/cmd/stockweb")
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build does
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building detour:", err)
			return 1
		}
	}
	controllerBin = filepath.Join(filepath.Dir(detourBin), "detour-controller")
	return m.Run()
}

// result is what a command printed and how it ended.
type result struct {
	stdout, stderr string
	err            error
}

// detour runs the detour binary inside ns with args, optionally changing the command first.
func detour(t testing.TB, ns *netns.NS, prep func(*exec.Cmd), args ...string) result {
	t.Helper()
	cmd := exec.Command(detourBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if prep != nil {
		prep(cmd)
	}
	err := ns.Run(cmd)
	return result{out.String(), errb.String(), err}
}

// mustDetour runs detour and fails the test if it fails.
func mustDetour(t testing.TB, ns *netns.NS, args ...string) string {
	t.Helper()
	r := detour(t, ns, nil, args...)
	if r.err != nil {
		t.Fatalf("detour %v: %v\nstdout: %s\nstderr: %s", args, r.err, r.stdout, r.stderr)
	}
	return r.stdout
}

// listener accepts connections inside a namespace and hands them to the test.
type listener struct {
	ln    *net.TCPListener
	conns chan *net.TCPConn
}

// listen opens a TCP listener at addr inside ns; it is closed when the test ends.
func listen(t testing.TB, ns *netns.NS, addr netip.AddrPort) *listener {
	t.Helper()
	l := &listener{conns: make(chan *net.TCPConn, 16)}
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	err := ns.Do(func() error {
		var err error
		l.ln, err = net.ListenTCP(network, net.TCPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { l.ln.Close() })
	go func() {
		for {
			c, err := l.ln.AcceptTCP()
			if err != nil {
				close(l.conns)
				return
			}
			l.conns <- c
		}
	}()
	return l
}

// dial connects from inside ns to dst.
func dial(t testing.TB, ns *netns.NS, dst netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dialling %s from %s: %v", dst, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expect waits for the connection from client (its local address) on l and checks its
// original destination.
func (l *listener) expect(t testing.TB, from string, wantOrig netip.AddrPort) {
	t.Helper()
	timeout := time.After(3 * time.Second)
	for {
		select {
		case c, ok := <-l.conns:
			if !ok {
				t.Fatalf("listener %s closed before the connection from %s arrived", l.ln.Addr(), from)
			}
			defer c.Close()
			if c.RemoteAddr().String() != from {
				continue
			}
			got, err := origdst.Lookup(c)
			if err != nil {
				t.Fatal(err)
			}
			if got != wantOrig {
				t.Fatalf("connection from %s on %s: original destination %s, want %s", from, l.ln.Addr(), got, wantOrig)
			}
			return
		case <-timeout:
			t.Fatalf("no connection from %s arrived on %s", from, l.ln.Addr())
		}
	}
}

// next waits for any connection on l.
func (l *listener) next(t testing.TB) *net.TCPConn {
	t.Helper()
	select {
	case c, ok := <-l.conns:
		if !ok {
			t.Fatalf("listener %s closed", l.ln.Addr())
		}
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(3 * time.Second):
		t.Fatalf("no connection arrived on %s", l.ln.Addr())
	}
	return nil
}

// quiet checks that nothing arrived on l.
func (l *listener) quiet(t testing.TB) {
	t.Helper()
	select {
	case c := <-l.conns:
		if c != nil {
			t.Fatalf("unexpected connection from %s on %s", c.RemoteAddr(), l.ln.Addr())
		}
	default:
	}
}
