//go:build !unix

package http1

import "net"

// peerCheck cannot peek portably here; a dead pooled connection is caught by the replay.
type peerCheck struct{}

func newPeerCheck(net.Conn) *peerCheck { return nil }

func (*peerCheck) peerClosed() bool { return false }
