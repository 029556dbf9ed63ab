//go:build unix

package proxy

import "syscall"

// fileLimit is the soft RLIMIT_NOFILE, which the Go runtime has raised to the hard limit at
// start.
func fileLimit() (uint64, bool) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, false
	}
	return uint64(l.Cur), true
}
