package netns_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// serveName listens on addr inside pod's namespace and answers every line
// a client sends with the pod's name, until the test ends. The listener
// stays in the pod's namespace after Do returns: sockets belong to the
// namespace they were made in.
func serveName(t *testing.T, pod *netns.Pod, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	err := pod.NS.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewScanner(c)
				for r.Scan() {
					fmt.Fprintln(c, pod.Name)
				}
			}()
		}
	}()
}

// askNames connects from pod to addr, asks n times who answers, and
// returns the answers; the connection is made inside the pod.
func askNames(pod *netns.Pod, addr netip.AddrPort, n int) ([]string, error) {
	var c net.Conn
	err := pod.NS.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s from %s: %w", addr, pod.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewScanner(c)
	var names []string
	for range n {
		fmt.Fprintln(c, "who")
		if !r.Scan() {
			return names, fmt.Errorf("reading from %s: %v", addr, errors.Join(r.Err(), errors.New("connection closed")))
		}
		names = append(names, r.Text())
	}
	return names, nil
}

func TestTopologyPods(t *testing.T) {
	topo := nstest.Topology(t)
	a, err := topo.AddPod("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := topo.AddPod("b")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("pods get the documented names and addresses", func(t *testing.T) {
		for i, tc := range []struct {
			pod          *netns.Pod
			name, v4, v6 string
		}{
			{a, topo.Prefix + "a", "198.18.0.2", "fd00:de70::2"},
			{b, topo.Prefix + "b", "198.18.0.3", "fd00:de70::3"},
		} {
			if tc.pod.NS.Name != tc.name || tc.pod.IPv4.String() != tc.v4 || tc.pod.IPv6.String() != tc.v6 || topo.Pods[i] != tc.pod {
				t.Errorf("pod %d = %s %s %s, want %s %s %s", i, tc.pod.NS.Name, tc.pod.IPv4, tc.pod.IPv6, tc.name, tc.v4, tc.v6)
			}
			out, err := exec.Command("ip", "-n", tc.name, "addr", "show", "eth0").CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, want := range []string{tc.v4 + "/16", tc.v6 + "/64"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("eth0 of %s lacks %s:\n%s", tc.name, want, out)
				}
			}
			if strings.Contains(string(out), "tentative") {
				t.Errorf("eth0 of %s has a tentative (unusable) address:\n%s", tc.name, out)
			}
		}
	})

	for _, tc := range []struct {
		name string
		addr netip.Addr
	}{
		{"a pod reaches another pod over IPv4", b.IPv4},
		{"a pod reaches another pod over IPv6", b.IPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(tc.addr, 8080)
			serveName(t, b, dst)
			names, err := askNames(a, dst, 1)
			if err != nil {
				t.Fatal(err)
			}
			if names[0] != "b" {
				t.Errorf("answered by %q, want b", names[0])
			}
		})
	}

	t.Run("the node forwards and the root namespace is untouched", func(t *testing.T) {
		read := func(p string) string {
			v, err := os.ReadFile("/proc/sys/" + p)
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(v))
		}
		var v4, v6 string
		topo.Node.Do(func() error {
			v4, v6 = read("net/ipv4/ip_forward"), read("net/ipv6/conf/all/forwarding")
			return nil
		})
		if v4 != "1" || v6 != "1" {
			t.Errorf("node forwarding v4 %s v6 %s, want 1 1", v4, v6)
		}
		links, err := netlink.LinkList() // this goroutine is in the root namespace
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if n := l.Attrs().Name; n == netns.BridgeName || strings.HasPrefix(n, "vdt") {
				t.Errorf("link %s is in the root namespace", n)
			}
		}
	})
}

func TestTopologyService(t *testing.T) {
	topo := nstest.Topology(t)
	var pods []*netns.Pod
	for _, name := range []string{"client", "b1", "b2"} {
		p, err := topo.AddPod(name)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	client, b1, b2 := pods[0], pods[1], pods[2]

	for _, tc := range []struct {
		family   string
		vip      netip.AddrPort
		backends []netip.AddrPort
	}{
		{"IPv4", netip.MustParseAddrPort("198.19.0.10:80"),
			[]netip.AddrPort{netip.AddrPortFrom(b1.IPv4, 8080), netip.AddrPortFrom(b2.IPv4, 8080)}},
		{"IPv6", netip.MustParseAddrPort("[fd00:de71::10]:80"),
			[]netip.AddrPort{netip.AddrPortFrom(b1.IPv6, 8080), netip.AddrPortFrom(b2.IPv6, 8080)}},
	} {
		t.Run(tc.family, func(t *testing.T) {
			serveName(t, b1, tc.backends[0])
			serveName(t, b2, tc.backends[1])
			if err := topo.AddService(tc.vip, tc.backends); err != nil {
				t.Fatal(err)
			}

			t.Run("new connections to the VIP reach both backends", func(t *testing.T) {
				seen := map[string]int{}
				for i := 0; i < 40 && len(seen) < 2; i++ {
					names, err := askNames(client, tc.vip, 1)
					if err != nil {
						t.Fatal(err)
					}
					seen[names[0]]++
				}
				if seen["b1"] == 0 || seen["b2"] == 0 || len(seen) != 2 {
					t.Errorf("backends reached: %v, want b1 and b2", seen)
				}
			})
			t.Run("one connection sticks to one backend", func(t *testing.T) {
				names, err := askNames(client, tc.vip, 20)
				if err != nil {
					t.Fatal(err)
				}
				for _, n := range names {
					if n != names[0] {
						t.Fatalf("one connection was answered by %v", names)
					}
				}
			})
			t.Run("a backend reaches the service, itself included", func(t *testing.T) {
				seen := map[string]int{}
				for i := 0; i < 40 && seen["b1"] == 0; i++ {
					names, err := askNames(b1, tc.vip, 1)
					if err != nil {
						t.Fatal(err)
					}
					seen[names[0]]++
				}
				if seen["b1"] == 0 {
					t.Errorf("b1 never reached itself through the VIP: %v", seen)
				}
			})
			t.Run("the node's rules name the service", func(t *testing.T) {
				bin := "iptables-save"
				if tc.vip.Addr().Is6() {
					bin = "ip6tables-save"
				}
				out, err := exec.Command("ip", "netns", "exec", topo.Node.Name, bin, "-t", "nat").CombinedOutput()
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				tag := "detour-test/service/" + tc.vip.String()
				if n := strings.Count(string(out), tag); n != len(tc.backends)+2 {
					t.Errorf("%d rules tagged %s, want %d:\n%s", n, tag, len(tc.backends)+2, out)
				}
			})
			t.Run("adding the same VIP again fails", func(t *testing.T) {
				if err := topo.AddService(tc.vip, tc.backends); err == nil {
					t.Error("a second AddService for the same VIP succeeded")
				}
			})
		})
	}

	for _, tc := range []struct {
		name     string
		vip      string
		backends []string
	}{
		{"a VIP outside the VIP ranges is refused", "198.18.0.50:80", []string{"198.18.0.3:8080"}},
		{"an IPv6 VIP outside fd00:de71::/64 is refused", "[fd00:de70::50]:80", []string{"[fd00:de70::3]:8080"}},
		{"a service without backends is refused", "198.19.0.11:80", nil},
		{"a backend of the other family is refused", "198.19.0.12:80", []string{"[fd00:de70::3]:8080"}},
		{"a backend outside the pod network is refused", "198.19.0.13:80", []string{"192.0.2.1:8080"}},
		{"a VIP without a port is refused", "198.19.0.14:0", []string{"198.18.0.3:8080"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var backends []netip.AddrPort
			for _, b := range tc.backends {
				backends = append(backends, netip.MustParseAddrPort(b))
			}
			if err := topo.AddService(netip.MustParseAddrPort(tc.vip), backends); err == nil {
				t.Error("AddService succeeded")
			}
		})
	}
}

func TestTopologyClose(t *testing.T) {
	nstest.RequireRoot(t)
	prefix := fmt.Sprintf("dt-close%d-", os.Getpid())
	t.Cleanup(func() { netns.Sweep(prefix) }) // only if the test fails midway

	topo, err := netns.NewTopology(prefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		if _, err := topo.AddPod(name); err != nil {
			t.Fatal(err)
		}
	}
	if err := topo.AddService(netip.MustParseAddrPort("198.19.0.10:80"), []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:8080")}); err != nil {
		t.Fatal(err)
	}
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range ipNetnsList(t) {
		if strings.HasPrefix(n, prefix) {
			t.Errorf("%s still listed after Close", n)
		}
	}
	if err := topo.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
	if _, err := topo.AddPod("c"); err == nil {
		t.Error("AddPod after Close succeeded")
	}
}
