//go:build linux

package rawsock

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawSock reads and writes a TCP socket with raw system calls, through its syscall.RawConn so
// that the runtime's poller still parks the goroutine on EAGAIN and deadlines and Close still
// apply. See the package comment for why.
//
// Measured: a proxy at moderate load goes idle between requests, and Go's sysmon thread then sleeps
// until the next system call that enters the runtime's syscall path (entersyscall) wakes it;
// once awake it polls every 20 µs for at least a millisecond before it sleeps again. net.Conn's
// Read and Write are such calls, so at 1000 requests/s sysmon never rests: its wake-ups and
// nanosleeps were a fifth of the proxy's CPU (perf, BenchmarkMesh at 1000 rps). A non-blocking
// socket call returns at once, so it needs none of what entersyscall provides (handing off the
// P while the thread blocks), which is why the runtime's own poller calls epoll raw as well.
// What sysmon would otherwise do meanwhile does not apply here: no goroutine of the engine runs
// for long (preemption), and any blocking syscall elsewhere in the process wakes it as before.
type rawSock struct {
	rc syscall.RawConn
	// pre, if not nil, is read first until its peeked bytes are used up: a sniffing listener's
	// connection that replays the bytes it looked at (proxy/detect.Conn).
	pre net.Conn
	// rd is ReadPooled's state, and readFn the function it gives the RawConn, bound once so
	// that a read allocates nothing. Reads are not concurrent (one reader per socket).
	rd struct {
		get   func() *[]byte
		put   func(*[]byte)
		b     *[]byte
		n     int
		errno syscall.Errno
	}
	readFn func(fd uintptr) bool
}

// peekedConn is a connection that replays bytes it peeked from the one it wraps.
type peekedConn interface {
	net.Conn
	Peeked() []byte
	NetConn() net.Conn
}

func rawIO(nc net.Conn) *rawSock {
	var pre net.Conn
	if pc, ok := nc.(peekedConn); ok {
		pre, nc = pc, pc.NetConn()
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &rawSock{rc: rc, pre: pre}
	s.readFn = s.readPooled
	return s
}

func (s *rawSock) Read(p []byte) (int, error) {
	if s.pre != nil {
		if len(s.pre.(peekedConn).Peeked()) > 0 {
			return s.pre.Read(p)
		}
		s.pre = nil
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // park until the poller reports the socket readable
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// ReadPooled implements Reader.
func (s *rawSock) ReadPooled(get func() *[]byte, put func(*[]byte)) (*[]byte, int, error) {
	if s.pre != nil {
		if len(s.pre.(peekedConn).Peeked()) > 0 {
			b := get()
			n, err := s.pre.Read((*b)[:cap(*b)])
			if err != nil || n == 0 {
				put(b)
				if err == nil {
					err = io.ErrNoProgress
				}
				return nil, 0, err
			}
			return b, n, nil
		}
		s.pre = nil
	}
	rd := &s.rd
	rd.get, rd.put, rd.b, rd.n, rd.errno = get, put, nil, 0, 0
	err := s.rc.Read(s.readFn)
	b, n, errno := rd.b, rd.n, rd.errno
	rd.get, rd.put, rd.b = nil, nil, nil
	switch {
	case err == nil && errno == 0 && n > 0:
		return b, n, nil
	case err == nil && errno != 0:
		err = os.NewSyscallError("read", errno)
	case err == nil:
		err = io.EOF
	}
	if b != nil {
		put(b)
	}
	return nil, 0, err
}

// readPooled is ReadPooled's attempt, run by the RawConn with the socket's read lock held.
func (s *rawSock) readPooled(fd uintptr) bool {
	rd := &s.rd
	rd.b = rd.get()
	p := (*rd.b)[:cap(*rd.b)]
	for {
		r, _, e := syscall.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			rd.put(rd.b) // wait without it
			rd.b = nil
			return false
		}
		rd.n, rd.errno = int(r), e
		return true
	}
}

func (s *rawSock) Write(p []byte) (int, error) { return s.write(p, true) }

// TryWrite implements Writer.
func (s *rawSock) TryWrite(p []byte) (int, error) { return s.write(p, false) }

// write writes p; on a full send buffer it parks until the socket is writable if wait is set,
// and returns what it wrote so far otherwise.
func (s *rawSock) write(p []byte, wait bool) (int, error) {
	n := 0
	var errno syscall.Errno
	err := s.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			r, _, e := syscall.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
			switch e {
			case 0:
				n += int(r)
			case unix.EINTR:
			case unix.EAGAIN:
				return !wait // park until the poller reports the socket writable, if asked to
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("write", errno)
	}
	return n, err
}
