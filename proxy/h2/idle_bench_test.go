package h2

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/net/http2"
)

// idleConns is how many client connections BenchmarkIdleClientConnections holds open.
const idleConns = 10000

// BenchmarkIdleClientConnections measures what a Server costs per idle client connection:
// 10,000 loopback clients complete the HTTP/2 handshake (preface, SETTINGS both ways, SETTINGS
// ACK) and then stay silent. It reports the growth of the Go heap and goroutine stacks in use and
// of the process RSS, per connection, for the engine ("h2-engine") and, as the floor, for a server
// that only parks one goroutine per accepted connection in a 1-byte read ("plain-tcp"): the
// engine's own cost is the difference. The clients run in a child process (this test binary,
// TestIdleClientsHelper), so only the server side is measured and each process keeps within its
// file descriptor limit. Run it with -benchtime 1x.
func BenchmarkIdleClientConnections(b *testing.B) {
	raiseNoFile(b, idleConns+1000)
	b.Run("plain-tcp", func(b *testing.B) {
		for b.Loop() {
			ln := listenParked(b)
			measureIdle(b, ln.Addr().String(), "plain")
			ln.Close()
		}
	})
	b.Run("h2-engine", func(b *testing.B) {
		for b.Loop() {
			addr, srv, _ := startProxy(b, Config{Router: fixedRouter(netipLoopback), Logger: discardLogger()})
			measureIdle(b, addr.String(), "h2")
			srv.Close()
		}
	})
}

// TestIdleClientsHelper is BenchmarkIdleClientConnections' client process: with
// DETOUR_IDLE_ADDR set it opens idleConns connections to it, handshakes each
// (DETOUR_IDLE_MODE plain or h2), says "ready" on stdout and holds them until stdin closes.
func TestIdleClientsHelper(t *testing.T) {
	addr := os.Getenv("DETOUR_IDLE_ADDR")
	if addr == "" {
		t.Skip("the client process of BenchmarkIdleClientConnections")
	}
	raiseNoFile(t, idleConns+1000)
	handshake := h2Handshake
	if os.Getenv("DETOUR_IDLE_MODE") == "plain" {
		handshake = plainHandshake
	}
	conns := make([]net.Conn, 0, idleConns)
	for range idleConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
		if err := handshake(c); err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
	}
	os.Stdout.WriteString("ready\n")
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// raiseNoFile raises the soft RLIMIT_NOFILE to at least n, within the hard limit.
func raiseNoFile(tb testing.TB, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		tb.Skipf("RLIMIT_NOFILE hard limit %d, want %d", lim.Max, n)
	}
	old := lim
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

var netipLoopback = netip.MustParseAddrPort("127.0.0.1:1")

// listenParked accepts connections and parks a goroutine on each in a read, after it has
// written one byte (so the client knows it is being served).
func listenParked(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var one [1]byte
				c.Read(one[:])
				c.Write(one[:])
				c.Read(one[:])
			}()
		}
	}()
	return ln
}

// plainHandshake writes a byte and reads the parked server's answer.
func plainHandshake(c net.Conn) error {
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err
}

// h2Handshake sends the client preface and SETTINGS and reads until the engine's SETTINGS ACK:
// the engine has read everything and waits in its read loop, idle.
func h2Handshake(c net.Conn) error {
	var out bytes.Buffer
	out.WriteString(http2.ClientPreface)
	http2.NewFramer(&out, nil).WriteSettings()
	if _, err := c.Write(out.Bytes()); err != nil {
		return err
	}
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
			return err
		}
		if http2.FrameType(hdr[3]) == http2.FrameSettings && http2.Flags(hdr[4])&http2.FlagSettingsAck != 0 {
			return nil
		}
	}
}

// measureIdle has a child process open idleConns connections to addr and handshake each, and
// reports the growth of heap, stacks and RSS per connection; then the child closes them.
func measureIdle(b *testing.B, addr, mode string) {
	b.Helper()
	heap0, stack0, rss0 := memNow()
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClientsHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "DETOUR_IDLE_ADDR="+addr, "DETOUR_IDLE_MODE="+mode)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		b.Fatalf("the client process: %q, %v", line, err)
	}
	heap1, stack1, rss1 := memNow()
	b.ReportMetric(float64(heap1-heap0)/idleConns, "heap-B/conn")
	b.ReportMetric(float64(stack1-stack0)/idleConns, "stack-B/conn")
	b.ReportMetric(float64(rss1-rss0)/idleConns, "rss-B/conn")
}

// memNow returns the heap and stack bytes in use after a GC, and the process RSS.
func memNow() (heap, stack, rss int64) {
	runtime.GC()
	runtime.GC() // a second cycle empties sync.Pools' victim caches, as an idle process would
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b, _ := os.ReadFile("/proc/self/statm")
	if f := strings.Fields(string(b)); len(f) > 1 {
		pages, _ := strconv.ParseInt(f[1], 10, 64)
		rss = pages * int64(os.Getpagesize())
	}
	return int64(ms.HeapInuse), int64(ms.StackInuse), rss
}
