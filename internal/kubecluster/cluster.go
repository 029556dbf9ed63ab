package kubecluster

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/detourmesh/detour/netns"
)

// Version is the Kubernetes release the harness runs, the one scripts/k8s-build.sh builds.
const Version = "v1.37.2"

// DefaultRoot holds one state directory per cluster. It is on disk, not tmpfs: a node's
// images and container layers live there too.
const DefaultRoot = "/tmp/detour-kube"

// Fixed ports on the cluster's own loopback address (see the package doc).
const (
	etcdPort       = 2379
	etcdPeerPort   = 2380
	APIServerPort  = 6443
	controllerPort = 10257
	schedulerPort  = 10259
)

// Ranges of the cluster's networks (shared/DESIGN.md): services in 198.19.0.0/16, the node's
// pods in one /24 of 198.18.0.0/16.
const (
	ServiceCIDR = "198.19.0.0/16"
	// ServiceCIDR6 holds the IPv6 ClusterIPs of dual-stack Services (ipFamilyPolicy
	// PreferDualStack or RequireDualStack); IPv4 is the primary family.
	ServiceCIDR6 = "fd00:de70:f::/112"
	// APIServiceIP is the ClusterIP of the "kubernetes" Service, the first of ServiceCIDR.
	APIServiceIP = "198.19.0.1"
)

// Options configure Start. The zero value starts an API-only cluster with the cached
// binaries under DefaultRoot.
type Options struct {
	// Name is the cluster's name and the name of its state directory under Root; it must be
	// unique among running clusters. Empty means "c<pid>-<n>".
	Name string
	// Root is the directory holding state directories; empty means DefaultRoot.
	Root string
	// BinDir holds the Kubernetes binaries; empty means BinDir().
	BinDir string
	// Timeout bounds Start; 0 means 90 s.
	Timeout time.Duration
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
	// Node adds a one-node cluster: containerd, kube-scheduler, the kubelet, kube-proxy and
	// CNI, with the node's networking (and then the control plane too) in a network
	// namespace of its own. It needs root. See node.go.
	Node bool
	// Images are image archives (docker-archive or OCI) imported into the node's containerd
	// before the kubelet starts; they must include the sandbox image SandboxImage.
	Images []string
	// DNS runs CoreDNS (DNSImage, among Images) as the node cluster's DNS at DNSServiceIP,
	// and Start waits for it: pods then resolve Services by name.
	DNS bool
}

// Timings are how long the phases of Start took.
type Timings struct {
	// ControlPlane is from Start until the API server is ready.
	ControlPlane time.Duration
	// ServiceAccount is from Start until the "default" ServiceAccount exists (the
	// controller-manager works).
	ServiceAccount time.Duration
	// NodeReady is from Start until the node is Ready (node clusters only).
	NodeReady time.Duration
	// DNSReady is from Start until CoreDNS is Ready (Options.DNS only).
	DNSReady time.Duration
	// Images is how long importing Options.Images took.
	Images time.Duration
	// Total is the whole of Start.
	Total time.Duration
}

// Cluster is a running cluster. Stop removes it.
type Cluster struct {
	// Name and Dir are the cluster's name and state directory.
	Name, Dir string
	// Kubeconfig is the path of a kubeconfig for cluster-admin (system:masters).
	Kubeconfig string
	// Server is the API server's URL, https://127.77.X.Y:6443, on the root namespace's
	// loopback (in a node cluster, a relay into the node's namespace).
	Server string
	// Addr is the cluster's loopback address in the root namespace: every component of an
	// API-only cluster listens on it; a node cluster's relay to its API server does.
	Addr netip.Addr
	// NodeNS is the node's network namespace (node clusters only): the control plane, the
	// kubelet, containerd, kube-proxy, the CNI bridge and the pods' veths live there.
	NodeNS *netns.NS
	// BinDir holds the binaries the cluster runs (kubectl among them).
	BinDir string
	// CAFile is the cluster CA certificate (PEM), which signed the API server's certificate.
	CAFile string
	// Timings of Start.
	Timings Timings

	log     *slog.Logger
	ca      *authority
	procs   []*proc
	restCfg *rest.Config

	// Where the control plane listens inside its namespace, and the API server's URL as
	// the components (and pods) reach it.
	local, apiBind netip.Addr
	inner          string
	starter        func(*exec.Cmd) error
	relay          *relay

	stopOnce sync.Once
	stopErr  error
}

var clusterSeq atomic.Uint64

// BinDir returns the directory scripts/k8s-build.sh builds the binaries into:
// $DETOUR_K8S_CACHE/bin, or ${XDG_CACHE_HOME:-~/.cache}/detour/k8s-v1.37.2/bin. It fails,
// saying how to build them, if kube-apiserver is not there.
func BinDir() (string, error) {
	cache := os.Getenv("DETOUR_K8S_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("finding the Kubernetes binaries: %w", err)
			}
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "detour", "k8s-"+Version)
	}
	dir := filepath.Join(cache, "bin")
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		return "", fmt.Errorf("no Kubernetes %s binaries in %s: build them with scripts/k8s-build.sh (about 14 minutes cold, then cached): %w", Version, dir, err)
	}
	return dir, nil
}

// Start starts etcd, kube-apiserver and kube-controller-manager and returns once the API
// server is ready and the "default" ServiceAccount exists (pods created before it are
// refused); with opts.Node, also the node, returning once it is Ready (and, with opts.DNS,
// CoreDNS too). It never waits longer than opts.Timeout. On failure it removes everything it
// started and returns the error with the failing component's log tail. The caller must call
// Stop.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	begin := time.Now()
	if opts.Root == "" {
		opts.Root = DefaultRoot
	}
	if opts.Name == "" {
		opts.Name = fmt.Sprintf("c%d-%d", os.Getpid(), clusterSeq.Add(1))
	}
	if opts.Timeout == 0 {
		opts.Timeout = 90 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = BinDir(); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	if !validName(opts.Name) {
		return nil, fmt.Errorf("starting cluster: name %q: use 1 to 40 of a-z, 0-9 and -", opts.Name)
	}
	if err := os.MkdirAll(opts.Root, 0o755); err != nil {
		return nil, fmt.Errorf("starting cluster %s: %w", opts.Name, err)
	}
	dir := filepath.Join(opts.Root, opts.Name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("starting cluster %s: %s exists (a leftover of a crashed run? kubecluster.Sweep removes those): %w", opts.Name, dir, err)
		}
		return nil, fmt.Errorf("starting cluster %s: %w", opts.Name, err)
	}
	c := &Cluster{Name: opts.Name, Dir: dir, BinDir: opts.BinDir, log: opts.Logger.With("cluster", opts.Name)}
	defer func() {
		if err != nil {
			if serr := c.Stop(); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}()
	for _, sub := range []string{"pids", "logs", "pki", "etcd"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	// The owner file tells Sweep whether this cluster's owner still runs.
	if err := writeProcID(filepath.Join(dir, "owner"), os.Getpid()); err != nil {
		return nil, err
	}
	if c.Addr, err = pickAddr(); err != nil {
		return nil, err
	}
	c.Server = "https://" + net.JoinHostPort(c.Addr.String(), strconv.Itoa(APIServerPort))
	c.local, c.apiBind, c.inner = c.Addr, c.Addr, c.Server
	if opts.Node {
		if err := c.makeNode(); err != nil {
			return nil, err
		}
	}
	if err := c.writePKI(); err != nil {
		return nil, fmt.Errorf("starting cluster %s: %w", c.Name, err)
	}

	c.log.Info("starting etcd, kube-apiserver and kube-controller-manager", "addr", c.Addr, "node", opts.Node)
	if _, err := c.startEtcd(); err != nil {
		return nil, err
	}
	api, err := c.startAPIServer()
	if err != nil {
		return nil, err
	}
	// The controller-manager waits for the API server itself; starting it now overlaps
	// their start-up.
	cm, err := c.startControllerManager(opts.Node)
	if err != nil {
		return nil, err
	}
	if opts.Node {
		if err := c.startNodeComponents(ctx, opts.Images, opts.DNS); err != nil {
			return nil, err
		}
	}
	if err := c.waitReady(ctx, api); err != nil {
		return nil, err
	}
	c.Timings.ControlPlane = time.Since(begin)
	c.log.Info("kube-apiserver ready", "after", c.Timings.ControlPlane)

	if err := c.waitDefaultServiceAccount(ctx, cm); err != nil {
		return nil, err
	}
	c.Timings.ServiceAccount = time.Since(begin)
	if opts.Node {
		if err := c.waitNodeReady(ctx); err != nil {
			return nil, err
		}
		c.Timings.NodeReady = time.Since(begin)
		if opts.DNS {
			cs, err := c.Client()
			if err != nil {
				return nil, err
			}
			if err := deployDNS(ctx, cs); err != nil {
				return nil, err
			}
			if err := c.waitDNSReady(ctx, cs); err != nil {
				return nil, err
			}
			c.Timings.DNSReady = time.Since(begin)
		}
	}
	c.Timings.Total = time.Since(begin)
	c.log.Info("cluster ready", "after", c.Timings.Total, "kubeconfig", c.Kubeconfig)
	return c, nil
}

// validName keeps names usable in paths, cgroup and namespace names, and free of '.', which
// ends the node namespace's name (so that no cluster's names are a prefix of another's).
func validName(name string) bool {
	if len(name) == 0 || len(name) > 40 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// pickAddr chooses an address in 127.77.0.0/16 on which every fixed port is free.
func pickAddr() (netip.Addr, error) {
	ports := []int{etcdPort, etcdPeerPort, APIServerPort, controllerPort, schedulerPort}
	for range 50 {
		a := netip.AddrFrom4([4]byte{127, 77, byte(rand.IntN(254) + 1), byte(rand.IntN(254) + 1)})
		free := true
		for _, p := range ports {
			ln, err := net.Listen("tcp", net.JoinHostPort(a.String(), strconv.Itoa(p)))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return a, nil
		}
	}
	return netip.Addr{}, errors.New("no free address in 127.77.0.0/16 after 50 tries")
}

func (c *Cluster) pki(name string) string { return filepath.Join(c.Dir, "pki", name) }

// writePKI makes the CA, the serving and client certificates, the ServiceAccount signing key
// and the admin kubeconfig.
func (c *Cluster) writePKI() error {
	ca, err := newAuthority(c.Name)
	if err != nil {
		return err
	}
	c.ca = ca
	c.CAFile = c.pki("ca.crt")
	if err := os.WriteFile(c.CAFile, ca.pem, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(c.pki("ca.key"), mustPKCS8(ca), 0o600); err != nil {
		return err
	}
	serving, err := ca.issue("kube-apiserver", nil, []string{
		c.Addr.String(), c.apiBind.String(), APIServiceIP, "localhost", "127.0.0.1",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
	})
	if err != nil {
		return err
	}
	if _, _, err := serving.write(c.pki(""), "apiserver"); err != nil {
		return err
	}
	// The API server's client certificate towards kubelets.
	kc, err := ca.issue("kube-apiserver-kubelet-client", []string{"system:masters"}, nil)
	if err != nil {
		return err
	}
	if _, _, err := kc.write(c.pki(""), "apiserver-kubelet-client"); err != nil {
		return err
	}
	if _, _, err := writeServiceAccountKey(c.pki("")); err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := c.writeKubeconfig(c.Kubeconfig, c.Server, "admin", []string{"system:masters"}); err != nil {
		return err
	}
	for _, k := range []struct{ file, user string }{
		{"controller-manager", "system:kube-controller-manager"},
		{"scheduler", "system:kube-scheduler"},
		{"kube-proxy", "system:kube-proxy"},
		{"kubelet", "system:node:" + NodeName},
	} {
		var orgs []string
		if k.file == "kubelet" {
			orgs = []string{"system:nodes"}
		}
		if err := c.writeKubeconfig(c.pki(k.file+".kubeconfig"), c.inner, k.user, orgs); err != nil {
			return err
		}
	}
	return nil
}

func mustPKCS8(a *authority) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		panic(err) // an ECDSA key we made always marshals
	}
	return pemBlock("PRIVATE KEY", der)
}

// writeKubeconfig writes a kubeconfig for user (groups orgs) with an embedded client
// certificate, pointing at the API server.
func (c *Cluster) writeKubeconfig(path, server, user string, orgs []string) error {
	l, err := c.ca.issue(user, orgs, nil)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[c.Name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: c.ca.pem}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: l.certPEM, ClientKeyData: l.keyPEM}
	cfg.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: user}
	cfg.CurrentContext = c.Name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

func (c *Cluster) hostPort(port int) string {
	return net.JoinHostPort(c.local.String(), strconv.Itoa(port))
}

func (c *Cluster) bin(name string) string { return filepath.Join(c.BinDir, name) }

func (c *Cluster) startEtcd() (*proc, error) {
	client := "http://" + c.hostPort(etcdPort)
	peer := "http://" + c.hostPort(etcdPeerPort)
	return c.start("etcd", c.bin("etcd"), []string{
		"--name=default",
		"--data-dir=" + filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=default=" + peer,
		"--listen-metrics-urls=",
		// A throw-away cluster: durability is worth nothing, and fsync on a shared VM disk
		// makes every write slow.
		"--unsafe-no-fsync",
		"--log-level=warn",
	}, c.starter)
}

func (c *Cluster) startAPIServer() (*proc, error) {
	return c.start("kube-apiserver", c.bin("kube-apiserver"), []string{
		"--etcd-servers=http://" + c.hostPort(etcdPort),
		"--bind-address=" + c.apiBind.String(),
		"--secure-port=" + strconv.Itoa(APIServerPort),
		// What the "kubernetes" Service's endpoints say: the node's address, where pods
		// reach the API server. Endpoints may not be loopback addresses, so an API-only
		// cluster advertises that address too, which nothing in the root namespace dials.
		"--advertise-address=" + NodeIP,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-cluster-ip-range=" + ServiceCIDR + "," + ServiceCIDR6,
		"--cert-dir=" + c.pki(""),
		"--tls-cert-file=" + c.pki("apiserver.crt"),
		"--tls-private-key-file=" + c.pki("apiserver.key"),
		"--client-ca-file=" + c.CAFile,
		"--kubelet-client-certificate=" + c.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + c.pki("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + c.CAFile,
		// ServiceAccount tokens: issued (TokenRequest, projected volumes) and verified
		// (TokenReview) with this key pair.
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-signing-key-file=" + c.pki("sa.key"),
		"--service-account-key-file=" + c.pki("sa.pub"),
		"--authorization-mode=Node,RBAC",
		// MutatingAdmissionWebhook and ValidatingAdmissionWebhook are on by default; naming
		// them keeps Detour's webhook working should the defaults change.
		"--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}, c.starter)
}

func (c *Cluster) startControllerManager(node bool) (*proc, error) {
	kc := c.pki("controller-manager.kubeconfig")
	args := []string{
		"--kubeconfig=" + kc,
		"--bind-address=" + c.local.String(),
		"--secure-port=" + strconv.Itoa(controllerPort),
		"--cert-dir=" + c.pki("controller-manager"),
		// One instance: waiting for a lease would only cost start-up time.
		"--leader-elect=false",
		"--service-account-private-key-file=" + c.pki("sa.key"),
		"--root-ca-file=" + c.CAFile,
		"--cluster-signing-cert-file=" + c.CAFile,
		"--cluster-signing-key-file=" + c.pki("ca.key"),
		"--use-service-account-credentials=true",
		// Each controller's client makes its ServiceAccount and token at start, one after
		// the other: the default 20 requests/s add seconds to every cluster's start.
		"--kube-api-qps=500", "--kube-api-burst=1000",
		"--profiling=false",
		"--v=1",
	}
	if !node {
		// Without kubelets, nodes would turn NotReady and their pods unready within a
		// minute: an API-only cluster's stand-in nodes (kubetest.MarkReady) stay as
		// declared.
		args = append(args, "--controllers=*,-node-lifecycle-controller")
	}
	return c.start("kube-controller-manager", c.bin("kube-controller-manager"), args, c.starter)
}

// waitReady waits until the API server answers /readyz with 200, failing early if it exits.
func (c *Cluster) waitReady(ctx context.Context, api *proc) error {
	cfg, err := c.RESTConfig()
	if err != nil {
		return err
	}
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer hc.CloseIdleConnections()
	var last string
	err = c.poll(ctx, api, func() bool {
		resp, err := hc.Get(c.Server + "/readyz")
		if err != nil {
			last = err.Error()
			return false
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		return fmt.Errorf("waiting for kube-apiserver /readyz (last: %s): %w", last, err)
	}
	return nil
}

func (c *Cluster) waitDefaultServiceAccount(ctx context.Context, cm *proc) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	var last error
	err = c.poll(ctx, cm, func() bool {
		_, last = cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return last == nil
	})
	if err != nil {
		if last != nil && !apierrors.IsNotFound(last) {
			err = fmt.Errorf("%w (last: %v)", err, last)
		}
		return fmt.Errorf("waiting for the default ServiceAccount (kube-controller-manager makes it): %w", err)
	}
	return nil
}

// poll checks cond every 50 ms until it holds, ctx ends, or p (if not nil) exits. Every
// process of the cluster is watched: any of them exiting fails the wait with its log.
func (c *Cluster) poll(ctx context.Context, p *proc, cond func() bool) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		for _, q := range c.procs {
			if q.exited() {
				return fmt.Errorf("%s exited (%v); %s", q.name, q.err, tail(q.log, 30))
			}
		}
		select {
		case <-ctx.Done():
			msg := ""
			if p != nil {
				msg = "; " + tail(p.log, 30)
			}
			return fmt.Errorf("%w%s", ctx.Err(), msg)
		case <-t.C:
		}
	}
}

// RESTConfig returns a client configuration for cluster-admin.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	if c.restCfg == nil {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("reading kubeconfig %s: %w", c.Kubeconfig, err)
		}
		c.restCfg = cfg
	}
	return rest.CopyConfig(c.restCfg), nil
}

// Client returns a clientset for cluster-admin.
func (c *Cluster) Client() (*kubernetes.Clientset, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// Kubectl returns a command running the cluster's kubectl with args against the cluster.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.bin("kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	return cmd
}

// LogTails returns the last n lines of every component's log, for a failing test's output.
func (c *Cluster) LogTails(n int) string {
	var s string
	for _, p := range c.procs {
		s += tail(p.log, n) + "\n"
	}
	return s
}

// Stop ends every process of the cluster (SIGTERM, then SIGKILL after a grace period) in
// the reverse order of their start and removes the state directory. It is safe to call more
// than once and from t.Cleanup after a failed test.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		// Clients through the relay (watches) would hold the API server's graceful
		// shutdown open.
		if c.relay != nil {
			c.relay.close()
		}
		for i := len(c.procs) - 1; i >= 0; i-- {
			p := c.procs[i]
			id := procID{pid: p.cmd.Process.Pid}
			id.start, _ = startTime(id.pid)
			t0 := time.Now()
			// The API server drains its watches for up to a minute on SIGTERM: nothing of a
			// throw-away cluster is worth that wait.
			grace := 10 * time.Second
			if p.name == "kube-apiserver" {
				grace = time.Second
			}
			if err := terminate(id, grace, p.exited); err != nil {
				errs = append(errs, fmt.Errorf("stopping %s: %w", p.name, err))
			}
			c.log.Debug("stopped", "component", p.name, "after", time.Since(t0))
			if p.name == "kubelet" {
				// With the kubelet gone nothing restarts the containers: end them now, so
				// that their API watches (CoreDNS's) do not hold the API server's shutdown.
				if cgs, err := cgroupMounts(); err == nil {
					if err := killCgroupProcs(cgroupTree(cgs, c.Name)); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		if err := teardown(c.Dir); err != nil {
			errs = append(errs, err)
		}
		c.stopErr = errors.Join(errs...)
		if c.stopErr != nil {
			c.stopErr = fmt.Errorf("stopping cluster %s: %w", c.Name, c.stopErr)
		}
	})
	return c.stopErr
}
