package netns_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// nsInode returns the inode of the calling thread's network namespace.
func nsInode(t testing.TB) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func pathInode(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// ipNetnsList returns the names `ip netns list` prints.
func ipNetnsList(t testing.TB) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func TestCreate(t *testing.T) {
	ns := nstest.New(t)

	t.Run("ip netns lists the new namespace", func(t *testing.T) {
		found := false
		for _, n := range ipNetnsList(t) {
			found = found || n == ns.Name
		}
		if !found {
			t.Errorf("ip netns list does not show %s", ns.Name)
		}
	})
	t.Run("only an up loopback is inside", func(t *testing.T) {
		out, err := exec.Command("ip", "-n", ns.Name, "-o", "link", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 || !strings.Contains(lines[0], "lo:") || !strings.Contains(lines[0], "UP") {
			t.Errorf("links in %s:\n%s", ns.Name, out)
		}
	})
	t.Run("creating it again fails", func(t *testing.T) {
		if _, err := netns.Create(ns.Name); err == nil {
			t.Error("Create of an existing name succeeded")
		}
	})
	t.Run("Open finds it and refuses a missing one", func(t *testing.T) {
		if _, err := netns.Open(ns.Name); err != nil {
			t.Error(err)
		}
		if _, err := netns.Open(ns.Name + "-missing"); err == nil {
			t.Error("Open of a missing namespace succeeded")
		}
	})
}

func TestDelete(t *testing.T) {
	nstest.RequireRoot(t)
	name := fmt.Sprintf("dt-del%d", os.Getpid())
	ns, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() }) // in case the test fails before deleting
	if err := ns.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ns.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Delete: %v", ns.Path(), err)
	}
	if err := ns.Delete(); err == nil {
		t.Error("deleting twice succeeded")
	}
}

func TestDo(t *testing.T) {
	ns := nstest.New(t)
	root := nsInode(t)

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"fn runs in the namespace's network", func(t *testing.T) {
			var inode uint64
			var links []string
			err := ns.Do(func() error {
				inode = nsInode(t)
				ls, err := netlink.LinkList()
				for _, l := range ls {
					links = append(links, l.Attrs().Name)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if want := pathInode(t, ns.Path()); inode != want {
				t.Errorf("namespace inode inside Do = %d, want %d (root %d)", inode, want, root)
			}
			if len(links) != 1 || links[0] != "lo" {
				t.Errorf("links inside Do = %v, want [lo]", links)
			}
		}},
		{"the caller is back in its namespace afterwards", func(t *testing.T) {
			if err := ns.Do(func() error { return nil }); err != nil {
				t.Fatal(err)
			}
			if got := nsInode(t); got != root {
				t.Errorf("namespace after Do = %d, want %d", got, root)
			}
		}},
		{"fn's error is returned unchanged", func(t *testing.T) {
			want := errors.New("boom")
			if err := ns.Do(func() error { return want }); err != want {
				t.Errorf("Do returned %v, want %v", err, want)
			}
		}},
		{"a panic in fn reaches the caller", func(t *testing.T) {
			defer func() {
				if r := recover(); r != "boom" {
					t.Errorf("recovered %v, want boom", r)
				}
			}()
			ns.Do(func() error { panic("boom") })
		}},
		{"a missing namespace is an error and fn does not run", func(t *testing.T) {
			ran := false
			err := (&netns.NS{Name: ns.Name + "-missing"}).Do(func() error { ran = true; return nil })
			if err == nil || ran {
				t.Errorf("Do on a missing namespace: err %v, ran %v", err, ran)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
}

func TestStart(t *testing.T) {
	ns := nstest.New(t)
	// A link only this namespace has, to tell it apart from the root one.
	err := ns.Do(func() error {
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "dtprobe0"}})
	})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		uid, gid uint32
	}{
		{"a command runs inside as root", 0, 0},
		{"a command runs inside as the proxy's uid", 2102, 2102},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			cmd := exec.Command("sh", "-c", "id -u; id -g; cat /proc/net/dev")
			cmd.Stdout, cmd.Stderr = &out, &out
			netns.AsUID(cmd, tt.uid, tt.gid)
			if err := ns.Run(cmd); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			lines := strings.SplitN(out.String(), "\n", 3)
			if lines[0] != fmt.Sprint(tt.uid) || lines[1] != fmt.Sprint(tt.gid) {
				t.Errorf("id -u, id -g = %q, %q, want %d, %d", lines[0], lines[1], tt.uid, tt.gid)
			}
			if !strings.Contains(lines[2], "dtprobe0:") {
				t.Errorf("the command does not see the namespace's links:\n%s", lines[2])
			}
		})
	}

	t.Run("AsUID keeps other process attributes", func(t *testing.T) {
		cmd := exec.Command("true")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		netns.AsUID(cmd, 2102, 2102)
		if !cmd.SysProcAttr.Setpgid || cmd.SysProcAttr.Credential.Uid != 2102 {
			t.Errorf("SysProcAttr = %+v", cmd.SysProcAttr)
		}
	})
	t.Run("the caller stays in its namespace", func(t *testing.T) {
		cmd := exec.Command("true")
		root := nsInode(t)
		if err := ns.Run(cmd); err != nil {
			t.Fatal(err)
		}
		if got := nsInode(t); got != root {
			t.Errorf("namespace after Run = %d, want %d", got, root)
		}
	})
}

func TestSweep(t *testing.T) {
	nstest.RequireRoot(t)
	// A prefix of this test's own, so that namespaces of other test runs are
	// never swept.
	prefix := fmt.Sprintf("dt-sweep%d-", os.Getpid())
	t.Cleanup(func() { netns.Sweep(prefix) })

	var want []string
	for _, s := range []string{"a", "b"} {
		ns, err := netns.Create(prefix + s)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, ns.Name)
	}
	other := nstest.New(t) // must survive: it does not match the prefix
	// A process left inside, as a crashed run would leave it.
	sleeper := exec.Command("sleep", "60")
	left, _ := netns.Open(prefix + "a")
	if err := left.Start(sleeper); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill() })

	removed, err := netns.Sweep(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(removed) != fmt.Sprint(want) {
		t.Errorf("Sweep removed %v, want %v", removed, want)
	}
	err = sleeper.Wait()
	if ws, ok := sleeper.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the process inside ended with %v, want killed by SIGKILL", err)
	}
	for _, n := range ipNetnsList(t) {
		if strings.HasPrefix(n, prefix) {
			t.Errorf("%s is still listed after Sweep", n)
		}
	}
	if _, err := netns.Open(other.Name); err != nil {
		t.Errorf("Sweep removed a namespace outside its prefix: %v", err)
	}
	if _, err := netns.Sweep(""); err == nil {
		t.Error("Sweep with an empty prefix succeeded")
	}
}

func TestOpenPath(t *testing.T) {
	ns := nstest.New(t)
	want := pathInode(t, ns.Path())
	// A process's link, and a descriptor of our own, both name the namespace.
	cmd := exec.Command("sleep", "30")
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	fd, err := unix.Open(ns.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, path := range []string{ns.Path(), fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd)} {
		t.Run(path, func(t *testing.T) {
			byPath, err := netns.OpenPath(path)
			if err != nil {
				t.Fatal(err)
			}
			var inode uint64
			if err := byPath.Do(func() error { inode = nsInode(t); return nil }); err != nil {
				t.Fatal(err)
			}
			if inode != want {
				t.Errorf("inside %s: namespace %d, want %d", path, inode, want)
			}
			if err := byPath.Delete(); err == nil {
				t.Error("Delete of a namespace opened by path succeeded")
			}
		})
	}
	if _, err := netns.OpenPath("/etc/hostname"); err == nil || !strings.Contains(err.Error(), "not a mounted namespace") {
		t.Errorf("OpenPath of a plain file: %v", err)
	}
}
