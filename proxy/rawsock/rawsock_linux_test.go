//go:build linux

package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// replayConn replays peeked bytes before reading the connection it wraps, like proxy/detect.Conn.
type replayConn struct {
	net.Conn
	peeked []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(p, c.peeked)
		c.peeked = c.peeked[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
func (c *replayConn) Peeked() []byte    { return c.peeked }
func (c *replayConn) NetConn() net.Conn { return c.Conn }

func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d.(*net.TCPConn), r.c.(*net.TCPConn)
}

func TestRawIO(t *testing.T) {
	t.Run("replays peeked bytes, then reads the socket, then reports EOF", func(t *testing.T) {
		a, b := tcpPair(t)
		r := rawIO(&replayConn{Conn: b, peeked: []byte("peeked ")})
		if r == nil {
			t.Fatal("rawIO found no TCP socket under the replaying connection")
		}
		w := rawIO(a)
		big := make([]byte, 8<<20) // more than the socket buffers: the writer must wait for the reader
		for i := range big {
			big[i] = byte(i)
		}
		done := make(chan error, 1)
		go func() {
			_, err := w.Write(big)
			a.CloseWrite()
			done <- err
		}()
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("ReadAll: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Write: %v", err)
		}
		if string(got[:7]) != "peeked " || string(got[7:]) != string(big) {
			t.Fatalf("read %d bytes, not the peeked bytes followed by the %d written", len(got), len(big))
		}
	})
	t.Run("read deadline and close end a parked read", func(t *testing.T) {
		_, b := tcpPair(t)
		r := rawIO(b)
		b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past the deadline: %v, want os.ErrDeadlineExceeded", err)
		}
		b.SetReadDeadline(time.Time{})
		go func() {
			time.Sleep(20 * time.Millisecond)
			b.Close()
		}()
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on a closed connection: %v, want net.ErrClosed", err)
		}
	})
	t.Run("TryWrite returns what a full socket took without waiting, then the rest goes", func(t *testing.T) {
		a, b := tcpPair(t)
		w, r := rawIO(a), rawIO(b)
		big := make([]byte, 64<<20) // far more than both socket buffers: nobody reads yet
		for i := range big {
			big[i] = byte(i * 7)
		}
		n, err := w.TryWrite(big)
		if err != nil || n == 0 || n >= len(big) {
			t.Fatalf("TryWrite into an unread socket: %d of %d bytes, %v; want a partial write and no error", n, len(big), err)
		}
		if m, err := w.TryWrite(big[n:]); err != nil || m != 0 {
			t.Fatalf("TryWrite into the full socket: %d bytes, %v; want 0 and no error", m, err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := w.Write(big[n:])
			a.CloseWrite()
			done <- err
		}()
		got, err := io.ReadAll(r)
		if err != nil || <-done != nil {
			t.Fatalf("reading the rest: %v", err)
		}
		if string(got) != string(big) {
			t.Fatalf("read %d bytes, not the %d written", len(got), len(big))
		}
		a.Close()
		if _, err := w.TryWrite([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("TryWrite on a closed connection: %v, want net.ErrClosed", err)
		}
	})
	t.Run("ReadPooled holds no buffer while it waits, and returns the one it read into", func(t *testing.T) {
		a, b := tcpPair(t)
		r := rawIO(&replayConn{Conn: b, peeked: []byte("peeked")})
		var out, held atomic.Int32
		get := func() *[]byte {
			out.Add(1)
			held.Add(1)
			p := make([]byte, 0, 64)
			return &p
		}
		put := func(*[]byte) { held.Add(-1) }
		buf, n, err := r.ReadPooled(get, put)
		if err != nil || string((*buf)[:n]) != "peeked" {
			t.Fatalf("first ReadPooled: %q, %v; want the peeked bytes", (*buf)[:n], err)
		}
		put(buf)
		type res struct {
			s   string
			err error
		}
		done := make(chan res, 1)
		go func() {
			buf, n, err := r.ReadPooled(get, put)
			if err != nil {
				done <- res{"", err}
				return
			}
			s := string((*buf)[:n])
			put(buf)
			done <- res{s, nil}
		}()
		waitFor := func(cond func() bool) {
			for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("condition not reached within 5s")
				}
			}
		}
		waitFor(func() bool { return out.Load() >= 2 })  // it tried the empty socket
		waitFor(func() bool { return held.Load() == 0 }) // and waits without the buffer
		a.Write([]byte("later"))
		if r := <-done; r.err != nil || r.s != "later" {
			t.Fatalf("ReadPooled after data came: %q, %v", r.s, r.err)
		}
		a.Close()
		if _, _, err := r.ReadPooled(get, put); !errors.Is(err, io.EOF) {
			t.Fatalf("ReadPooled at EOF: %v", err)
		}
		if h := held.Load(); h != 0 {
			t.Fatalf("%d buffers not handed back", h)
		}
	})
	t.Run("a deferred connection's Write never waits; Drain writes the rest in order", func(t *testing.T) {
		a, b := tcpPair(t)
		wc := Wrap(a)
		d, ok := Defer(wc)
		if !ok {
			t.Fatal("Defer refused a connection made by Wrap")
		}
		if _, ok := Defer(b); ok {
			t.Fatal("Defer accepted a connection not made by Wrap")
		}
		var want []byte
		for i := range 16 { // 64 MiB, far more than both socket buffers, with nobody reading
			p := bytes.Repeat([]byte{byte(i)}, 4<<20)
			if n, err := wc.Write(p); n != len(p) || err != nil {
				t.Fatalf("Write %d: %d, %v; want all of it at once", i, n, err)
			}
			want = append(want, p...)
		}
		if d.Pending() == 0 {
			t.Fatal("nothing pending after writing 64 MiB to a socket nobody reads")
		}
		got := make(chan []byte, 1)
		go func() {
			all, _ := io.ReadAll(b)
			got <- all
		}()
		for i := 0; d.Pending() > 0; i++ {
			if err := d.Drain(1 << 20); err != nil {
				t.Fatal(err)
			}
			if i == 3 { // written while draining: queued behind the rest
				p := []byte("the end")
				wc.Write(p)
				want = append(want, p...)
			}
		}
		a.CloseWrite()
		if all := <-got; !bytes.Equal(all, want) {
			t.Fatalf("read %d bytes, not the %d written in order", len(all), len(want))
		}
	})
	t.Run("other connections keep net.Conn", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if rs := rawIO(a); rs != nil {
			t.Fatal("rawIO wrapped a net.Pipe")
		}
	})
}
