//go:build !unix

package proxy

func fileLimit() (uint64, bool) { return 0, false }
