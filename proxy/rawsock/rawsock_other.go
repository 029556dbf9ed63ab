//go:build !linux

package rawsock

import "net"

// rawSock is never made on this platform: IO reports ok false.
type rawSock struct{}

func (*rawSock) Read([]byte) (int, error)     { return 0, nil }
func (*rawSock) Write([]byte) (int, error)    { return 0, nil }
func (*rawSock) TryWrite([]byte) (int, error) { return 0, nil }
func (*rawSock) ReadPooled(func() *[]byte, func(*[]byte)) (*[]byte, int, error) {
	return nil, 0, nil
}

func rawIO(net.Conn) *rawSock { return nil }
