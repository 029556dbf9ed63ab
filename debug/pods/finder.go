package pods

import (
	"bytes"

	"debug/buildinfo"
	"os"
	"strconv"
	"strings"

	"github.com/detourmesh/detour/netns"
)

// DetourMain is the main package of the detour binary, as its build information names it.
const DetourMain = "github.com/detourmesh/detour/cmd/detour"

// Finder reads a node's processes. The zero Finder reads the real /proc and /run/netns.
type Finder struct {
	Proc     string // default /proc
	NetnsDir string // where `ip netns` names live; default /run/netns
	// IsDetour reports whether the executable at path is a detour binary; default: its Go
	// build information names DetourMain.
	IsDetour func(path string) bool
	// Recorded, if set, reads the pod that a namespace's rules record (init's --pod-name and
	// --pod-namespace): Resolve asks it of every namespace of the node when a pod name matches
	// no running proxy, so a pod is found by name while its proxy is down.
	Recorded func(ns *netns.NS) (namespace, name string, ok bool)
}

func (f Finder) proc() string {
	if f.Proc == "" {
		return "/proc"
	}
	return f.Proc
}

func (f Finder) netnsDir() string {
	if f.NetnsDir == "" {
		return "/run/netns"
	}
	return f.NetnsDir
}

// isDetourBinary reads the Go build information of the executable at path.
func isDetourBinary(path string) bool {
	bi, err := buildinfo.ReadFile(path)
	return err == nil && bi.Path == DetourMain
}

// nsKey identifies a namespace: the nsfs device and inode.
type nsKey struct{ dev, ino uint64 }

// startTicks reads field 22 of /proc/PID/stat, the start time in clock ticks after boot. The
// command name (field 2) may hold spaces and parentheses, so fields count from its last ')'.
func startTicks(stat string) (uint64, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(stat[i+1:])
	// fields[0] is field 3 (state), so field 22 is fields[19].
	if len(fields) < 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(fields[19], 10, 64)
	return n, err == nil
}

// statusUID reads the real UID from /proc/PID/status; -1 if absent.
func statusUID(status string) int {
	for line := range strings.Lines(status) {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				if n, err := strconv.Atoi(f[0]); err == nil {
					return n
				}
			}
		}
	}
	return -1
}

func readFile(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}

func splitNUL(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}
