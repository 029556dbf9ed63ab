package kubecluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourmesh/detour/netns"
)

// The node's network (shared/DESIGN.md ranges): its pods in PodCIDR behind bridge BridgeName,
// whose address NodeIP is the node's own: the kubelet and the API server listen there, and
// the "kubernetes" Service's endpoint is there.
const (
	NodeName = "detour-node"
	NodeIP   = "198.18.1.1"
	PodCIDR  = "198.18.1.0/24"
	// The node is dual-stack: pods also get an address in PodCIDR6, the node NodeIP6.
	NodeIP6    = "fd00:de70:1::1"
	PodCIDR6   = "fd00:de70:1::/64"
	BridgeName = "cni0"
	// SandboxImage is the pause image containerd pins as every pod's sandbox; a node
	// cluster's Options.Images must provide it (make image builds bin/images/pause.tar).
	SandboxImage = "detour.local/pause:3.10"
	kubeletPort  = 10250
)

// nodeNSName is the node namespace's name. '.' is not allowed in cluster names, so one
// cluster's namespace name is never a prefix of another's (netns.Sweep matches prefixes).
func nodeNSName(cluster string) string { return "dtk-" + cluster + ".node" }

// cgroupName is the kubelet's cgroup root in every hierarchy: the pods' cgroups live below
// it, and teardown removes it whole.
func cgroupName(cluster string) string { return "detour-kube-" + cluster }

// makeNode creates the node's namespace (lo, forwarding, bridge netfilter for kube-proxy,
// the bridge with the node's address), its cgroup root, and the relay that makes the API
// server inside it reachable on the root namespace's loopback. The control plane then
// starts inside the namespace: the kubelet and the pods reach the API server at NodeIP, and
// the API server reaches the kubelet and the pods (webhooks) directly, with nothing of the
// cluster's in the root namespace but the relay's listening socket.
func (c *Cluster) makeNode() error {
	if os.Geteuid() != 0 {
		return errors.New("a node cluster needs root (network namespaces, mounts, cgroups)")
	}
	for _, sub := range []string{"containerd", "kubelet", "pod-logs", "cni/net.d", "cni/ipam", "bin"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, sub), 0o755); err != nil {
			return err
		}
	}
	ns, err := netns.Create(nodeNSName(c.Name))
	if err != nil {
		return fmt.Errorf("creating the node namespace: %w", err)
	}
	c.NodeNS = ns
	if err := os.WriteFile(filepath.Join(c.Dir, "netns"), []byte(ns.Name+"\n"), 0o644); err != nil {
		return err
	}
	err = ns.Do(func() error {
		for _, kv := range []string{
			"net/ipv4/ip_forward=1",
			"net/ipv6/conf/all/forwarding=1",
			// The node's own IPv6 address usable at once (no duplicate address detection:
			// the bridge is the node's alone).
			"net/ipv6/conf/all/accept_dad=0",
			"net/ipv6/conf/default/accept_dad=0",
			// kube-proxy's service rules must see traffic bridged between pods (a pod
			// calling a Service whose endpoint is on the same bridge).
			"net/bridge/bridge-nf-call-iptables=1",
			"net/bridge/bridge-nf-call-ip6tables=1",
			// The ICMP redirects a DNAT back out of the same bridge would cause.
			"net/ipv4/conf/all/send_redirects=0",
			"net/ipv4/conf/default/send_redirects=0",
		} {
			k, v, _ := strings.Cut(kv, "=")
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("setting %s: %w", strings.ReplaceAll(k, "/", "."), err)
			}
		}
		// The bridge exists before CNI's first pod so that the node's address does (the
		// bridge plugin adopts it, and its gateway address is already there).
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName, HardwareAddr: net.HardwareAddr{0x02, 0xde, 0x70, 0, 1, 1}}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("adding bridge %s: %w", BridgeName, err)
		}
		addr, err := netlink.ParseAddr(NodeIP + "/24")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(br, addr); err != nil {
			return fmt.Errorf("addressing %s: %w", BridgeName, err)
		}
		addr6, err := netlink.ParseAddr(NodeIP6 + "/64")
		if err != nil {
			return err
		}
		addr6.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(br, addr6); err != nil {
			return fmt.Errorf("addressing %s: %w", BridgeName, err)
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		// The node has no default route (nothing leaves it), so a connection from the node
		// itself to a ClusterIP needs a route to exist before kube-proxy's OUTPUT rules
		// rewrite it; pods route through the node and need none.
		for _, r := range [][2]string{{ServiceCIDR, NodeIP}, {ServiceCIDR6, NodeIP6}} {
			_, svc, err := net.ParseCIDR(r[0])
			if err != nil {
				return err
			}
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: br.Attrs().Index, Dst: svc, Src: net.ParseIP(r[1]), Scope: netlink.SCOPE_LINK}); err != nil {
				return fmt.Errorf("routing %s to %s: %w", r[0], BridgeName, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("setting up the node namespace: %w", err)
	}
	if err := makeCgroupRoot(cgroupName(c.Name)); err != nil {
		return err
	}

	c.starter = ns.Start
	c.local = netip.MustParseAddr("127.0.0.1")
	c.apiBind = netip.MustParseAddr(NodeIP)
	c.inner = "https://" + net.JoinHostPort(NodeIP, strconv.Itoa(APIServerPort))
	c.relay, err = startRelay(c.Server[len("https://"):], ns, net.JoinHostPort(NodeIP, strconv.Itoa(APIServerPort)))
	return err
}

// cgroupMounts lists the mount points of the cgroup hierarchies (v1 and v2).
func cgroupMounts() ([]string, error) {
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, m := range mounts {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			dirs = append(dirs, m.point)
		}
	}
	return dirs, nil
}

// makeCgroupRoot creates the kubelet's cgroup root in every hierarchy (the kubelet requires
// it to exist), with the cpuset hierarchy's CPUs and memory nodes copied from the parent, as
// a new cpuset cgroup starts with none.
func makeCgroupRoot(name string) error {
	dirs, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating cgroup %s: %w", p, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(d, f)); err == nil {
				if err := os.WriteFile(filepath.Join(p, f), v, 0o644); err != nil {
					return fmt.Errorf("initialising %s: %w", filepath.Join(p, f), err)
				}
			}
		}
	}
	return nil
}

// hasCapSysResource reports whether CAP_SYS_RESOURCE is in this process's bounding set.
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return true
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			bits, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || bits&(1<<24) != 0 // CAP_SYS_RESOURCE = 24
		}
	}
	return true
}

// runcWrapper is for machines whose root lacks CAP_SYS_RESOURCE only (some VMs and
// sandboxes): there runc cannot apply the negative oom_score_adj that CRI asks for (the
// pause container's -998) and fails every pod ("can't get final child's PID from pipe").
// The wrapper clamps a negative oomScoreAdj in the bundle's config.json to 0, then runs runc.
const runcWrapper = `#!/bin/sh
# Written by Detour's test cluster (internal/kubecluster) on a machine without
# CAP_SYS_RESOURCE: clamp negative oomScoreAdj, which runc cannot apply here, to 0.
bundle= prev=
for a in "$@"; do
	case $prev in --bundle|-b) bundle=$a ;; esac
	case $a in --bundle=*) bundle=${a#--bundle=} ;; esac
	prev=$a
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
	sed -i -E 's/"oomScoreAdj":-[0-9]+/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec %s "$@"
`

func (c *Cluster) writeNodeConfig(dns bool) (containerdCfg, kubeletCfg, proxyCfg string, err error) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return "", "", "", fmt.Errorf("runc not found (Debian: apt-get install runc): %w", err)
	}
	if !hasCapSysResource() {
		wrapper := filepath.Join(c.Dir, "bin", "runc")
		if err := os.WriteFile(wrapper, []byte(fmt.Sprintf(runcWrapper, runc)), 0o755); err != nil {
			return "", "", "", err
		}
		c.log.Info("no CAP_SYS_RESOURCE: runc runs through a wrapper that clamps negative oomScoreAdj", "wrapper", wrapper)
		runc = wrapper
	}
	cni, err := cniBinDir()
	if err != nil {
		return "", "", "", err
	}
	cd := filepath.Join(c.Dir, "containerd")
	containerdCfg = filepath.Join(cd, "config.toml")
	// Everything containerd keeps lives in the state directory; plugins that would touch
	// the host's /opt, /etc or /var/run (NRI, CDI, image verifiers) are off.
	toml := fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
temp = %[3]q
imports = []
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %[4]q

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %[5]q
  [plugins.'io.containerd.cri.v1.runtime']
    enable_cdi = false
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %[6]q
          Root = %[7]q
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%[8]q]
      conf_dir = %[9]q
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), filepath.Join(cd, "tmp"), c.containerdSock(),
		SandboxImage, runc, filepath.Join(cd, "runc"), cni, filepath.Join(c.Dir, "cni", "net.d"))
	if err := os.MkdirAll(filepath.Join(cd, "tmp"), 0o755); err != nil {
		return "", "", "", err
	}
	if err := os.WriteFile(containerdCfg, []byte(toml), 0o644); err != nil {
		return "", "", "", err
	}

	conflist := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q, "gateway": %q}], [{"subnet": %q, "gateway": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
      "dataDir": %q
    }
  }]
}
`, "detour-"+c.Name, BridgeName, PodCIDR, NodeIP, PodCIDR6, NodeIP6, filepath.Join(c.Dir, "cni", "ipam"))
	if err := os.WriteFile(filepath.Join(c.Dir, "cni", "net.d", "10-detour.conflist"), []byte(conflist), 0o644); err != nil {
		return "", "", "", err
	}

	// Pods get no resolver of the host's (nothing leaves the node): the cluster DNS, if
	// any, for ClusterFirst pods, and nothing at all otherwise.
	resolv := filepath.Join(c.Dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("# the node has no DNS of its own\n"), 0o644); err != nil {
		return "", "", "", err
	}
	clusterDNS := "[]"
	if dns {
		clusterDNS = "[" + DNSServiceIP + "]"
	}
	serving, err := c.ca.issue("system:node:"+NodeName, []string{"system:nodes"}, []string{NodeIP, NodeIP6, NodeName})
	if err != nil {
		return "", "", "", err
	}
	kcert, kkey, err := serving.write(c.pki(""), "kubelet")
	if err != nil {
		return "", "", "", err
	}
	kubeletCfg = filepath.Join(c.Dir, "kubelet", "config.yaml")
	yaml := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 machines (such as the one this was written on): kubelet 1.37 refuses cgroup v1
# unless told not to; cgroupfs, as there is no systemd to drive.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%[1]s
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
port: %[4]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %[5]s
tlsPrivateKeyFile: %[6]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[7]s}
authorization: {mode: AlwaysAllow}
failSwapOn: false
podLogsDir: %[8]s
resolvConf: %[9]s
clusterDomain: cluster.local
clusterDNS: %[11]s
volumePluginDir: %[10]s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
rotateCertificates: false
serverTLSBootstrap: false
`, cgroupName(c.Name), c.containerdSock(), NodeIP, kubeletPort, kcert, kkey, c.CAFile,
		filepath.Join(c.Dir, "pod-logs"), resolv, filepath.Join(c.Dir, "kubelet", "volume-plugins"), clusterDNS)
	if err := os.WriteFile(kubeletCfg, []byte(yaml), 0o644); err != nil {
		return "", "", "", err
	}

	proxyCfg = filepath.Join(c.Dir, "kube-proxy.yaml")
	pyaml := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s
mode: iptables
clusterCIDR: %[2]s
hostnameOverride: %[3]s
bindAddress: %[4]s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [%[4]s/32, %[5]s/128]
# Leave the (host-wide) conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, c.pki("kube-proxy.kubeconfig"), PodCIDR+","+PodCIDR6, NodeName, NodeIP, NodeIP6)
	if err := os.WriteFile(proxyCfg, []byte(pyaml), 0o644); err != nil {
		return "", "", "", err
	}
	return containerdCfg, kubeletCfg, proxyCfg, nil
}

func (c *Cluster) containerdSock() string {
	return filepath.Join(c.Dir, "containerd", "containerd.sock")
}

// cniBinDir finds Debian's CNI plugins (containernetworking-plugins).
func cniBinDir() (string, error) {
	for _, d := range []string{"/usr/lib/cni", "/opt/cni/bin"} {
		if _, err := os.Stat(filepath.Join(d, "bridge")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no CNI plugins in /usr/lib/cni or /opt/cni/bin (Debian: apt-get install containernetworking-plugins)")
}

// startNodeComponents starts kube-scheduler and containerd, imports the images, then starts
// the kubelet and kube-proxy, all in the node namespace.
func (c *Cluster) startNodeComponents(ctx context.Context, images []string, dns bool) error {
	containerdCfg, kubeletCfg, proxyCfg, err := c.writeNodeConfig(dns)
	if err != nil {
		return fmt.Errorf("configuring the node: %w", err)
	}
	kc := c.pki("scheduler.kubeconfig")
	if _, err := c.start("kube-scheduler", c.bin("kube-scheduler"), []string{
		"--kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(schedulerPort),
		"--leader-elect=false",
		"--profiling=false",
		"--v=1",
	}, c.starter); err != nil {
		return err
	}
	ctrd, err := c.start("containerd", c.bin("containerd"), []string{"--config", containerdCfg}, c.starter)
	if err != nil {
		return err
	}
	begin := time.Now()
	if err := c.poll(ctx, ctrd, func() bool {
		return c.ctr(ctx, "version").Run() == nil
	}); err != nil {
		return fmt.Errorf("waiting for containerd: %w", err)
	}
	for _, img := range images {
		out, err := c.ctr(ctx, "-n", "k8s.io", "images", "import", img).CombinedOutput()
		if err != nil {
			return fmt.Errorf("importing image %s: %w\n%s", img, err, out)
		}
	}
	c.Timings.Images = time.Since(begin)
	c.log.Info("containerd ready, images imported", "images", len(images), "after", c.Timings.Images)

	if _, err := c.start("kubelet", c.bin("kubelet"), []string{
		"--config=" + kubeletCfg,
		"--kubeconfig=" + c.pki("kubelet.kubeconfig"),
		"--root-dir=" + filepath.Join(c.Dir, "kubelet"),
		"--cert-dir=" + c.pki("kubelet-certs"),
		"--hostname-override=" + NodeName,
		"--node-ip=" + NodeIP + "," + NodeIP6,
		"--v=1",
	}, c.starter); err != nil {
		return err
	}
	if _, err := c.start("kube-proxy", c.bin("kube-proxy"), []string{"--config=" + proxyCfg, "--v=1"}, c.starter); err != nil {
		return err
	}
	return nil
}

// ctr returns a command running the node's ctr against its containerd.
func (c *Cluster) ctr(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, c.bin("ctr"), append([]string{"--address", c.containerdSock()}, args...)...)
}

func (c *Cluster) waitNodeReady(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	var last string
	err = c.poll(ctx, nil, func() bool {
		n, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				last = cond.Reason + ": " + cond.Message
				return cond.Status == corev1.ConditionTrue
			}
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("waiting for node %s to be Ready (last: %s): %w", NodeName, last, err)
	}
	return nil
}
