// Package apply installs, removes and checks the plan of init/plan with iptables, one atomic
// iptables-restore transaction per family, and picks the iptables backend (legacy or nft)
// that the namespace already uses.
//
// Everything here runs in the network namespace of the calling thread and starts no
// goroutine that touches the network or runs a command, so callers may use it from inside
// netns.NS.Do.
package apply

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/detourmesh/detour/init/plan"
)

// Backend is an iptables implementation: the legacy x_tables one or the nf_tables one.
type Backend string

const (
	Legacy Backend = "legacy"
	NFT    Backend = "nft"
)

// Backends lists every backend, in the order detection reads them.
var Backends = []Backend{Legacy, NFT}

// Tables is what apply needs of one backend for one family. Its reading and checking methods
// are go-iptables' own; Save and Restore are the bulk operations go-iptables lacks.
type Tables interface {
	Exists(table, chain string, rulespec ...string) (bool, error)
	List(table, chain string) ([]string, error)
	// Save returns the iptables-save output of every table the backend holds.
	Save() (string, error)
	// Restore feeds input to iptables-restore --noflush: all of it applies, or none.
	Restore(input string) error
	// Replace feeds input to iptables-restore without --noflush: each table it names is
	// replaced whole, in one transaction; other tables stay as they are.
	Replace(input string) error
}

// Opener opens the tables of a backend for a family.
type Opener func(Backend, plan.Family) (Tables, error)

// binary names the iptables command of a backend and family, e.g. "ip6tables-nft".
func binary(b Backend, f plan.Family) string {
	name := "iptables"
	if f == plan.IPv6 {
		name = "ip6tables"
	}
	return name + "-" + string(b)
}

// OpenExec opens a backend through its iptables binaries.
func OpenExec(b Backend, f plan.Family) (Tables, error) {
	bin := binary(b, f)
	paths := map[string]string{}
	for _, name := range []string{bin, bin + "-save", bin + "-restore"} {
		p, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("%s not found: install the iptables package (Debian/Ubuntu: apt-get install iptables)", name)
		}
		paths[name] = p
	}
	return &execTables{bin: bin, path: paths[bin], save: paths[bin+"-save"], restore: paths[bin+"-restore"], family: f}, nil
}

type execTables struct {
	bin, path, save, restore string
	family                   plan.Family
	ipt                      *iptables.IPTables // made on first use: New runs the binary once
}

func (t *execTables) goIPTables() (*iptables.IPTables, error) {
	if t.ipt != nil {
		return t.ipt, nil
	}
	proto := iptables.ProtocolIPv4
	if t.family == plan.IPv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(t.path), iptables.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.bin, err)
	}
	t.ipt = ipt
	return ipt, nil
}

func (t *execTables) Exists(table, chain string, spec ...string) (bool, error) {
	ipt, err := t.goIPTables()
	if err != nil {
		return false, err
	}
	return ipt.Exists(table, chain, spec...)
}

func (t *execTables) List(table, chain string) ([]string, error) {
	ipt, err := t.goIPTables()
	if err != nil {
		return nil, err
	}
	return ipt.List(table, chain)
}

func (t *execTables) Save() (string, error) {
	if t.legacyAbsent() {
		return "", nil
	}
	out, err := run(exec.Command(t.save), "")
	if err != nil {
		return "", fmt.Errorf("%s-save: %w", t.bin, err)
	}
	return out, nil
}

func (t *execTables) Restore(input string) error {
	if _, err := run(exec.Command(t.restore, "--noflush", "--wait", "5"), input); err != nil {
		return fmt.Errorf("%s-restore: %w", t.bin, err)
	}
	return nil
}

// legacyAbsent reports, without running anything, that the legacy backend has no table in the
// calling thread's namespace: the kernel lists x_tables tables per namespace in /proc.
func (t *execTables) legacyAbsent() bool {
	if !strings.HasSuffix(t.bin, "-"+string(Legacy)) {
		return false
	}
	names := "/proc/thread-self/net/ip_tables_names"
	if t.family == plan.IPv6 {
		names = "/proc/thread-self/net/ip6_tables_names"
	}
	data, err := os.ReadFile(names)
	if errors.Is(err, os.ErrNotExist) {
		return true // x_tables is not even loaded
	}
	return err == nil && len(bytes.TrimSpace(data)) == 0
}

func (t *execTables) Replace(input string) error {
	if _, err := run(exec.Command(t.restore, "--wait", "5"), input); err != nil {
		return fmt.Errorf("%s-restore: %w", t.bin, err)
	}
	return nil
}

func run(cmd *exec.Cmd, stdin string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return "", err
		}
		return "", errors.New(msg)
	}
	return stdout.String(), nil
}
