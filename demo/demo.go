// Package demo runs the StockKube mesh on one node made of network namespaces, with no
// cluster: the first thing a new user runs (`make demo`). It shows the problem Detour solves,
// one gRPC connection pinned to one replica, and the fix, every call balanced. Everything it
// builds lives in namespaces named "dt-demo-…" and is removed when it ends, or by the next run
// if it crashed.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/detourmesh/detour/netns"
)

// Prefix starts the name of every namespace the demo makes.
const Prefix = "dt-demo-"

// Options configure a run.
type Options struct {
	Replicas int           // StockData replicas, default 2
	NoMesh   bool          // show only the cluster without Detour
	Duration time.Duration // keep running this long after setting up; 0: until ctx ends
	Port     uint16        // first loopback port of the forwarders, default 8000
	Bin      string        // folder holding detour, detour-controller, stockdata and stockweb; default: this executable's
	// Balancer for StockData: round-robin (default here, so every page load shows the same
	// even table) or p2c-ewma (the proxy's default, which favours whichever replica answers
	// fastest at the moment, so its tables vary from load to load).
	Balancer string
	// CertTTL is the lifetime of the workload certificates the controller issues; 0: its
	// default (24 h). A short one shows renewal, and lets a test see a certificate expire.
	CertTTL time.Duration
	// DashboardPort is the host loopback port the controller's dashboard is forwarded to,
	// default 7080 (where detour stat, top and dashboard look).
	DashboardPort uint16
	// ReportInterval is how often each proxy reports to the controller; 0: the proxy's
	// default (10 s). Tests shorten it.
	ReportInterval time.Duration
	// Control is the unix socket detour demo scale and fault talk to; default ControlSocket.
	Control string
	Out     io.Writer
	// JSON prints each step and message as one JSON object per line instead of text.
	JSON bool
}

var (
	vip4      = netip.MustParseAddrPort("198.19.0.10:80")
	vip6      = netip.MustParseAddrPort("[fd00:de71::10]:80")
	stockPort = uint16(8080)
	webPort   = uint16(8000)
	adminPort = uint16(7190)
	// dashboardPort is the controller's dashboard on the node's loopback (DESIGN.md).
	dashboardPort = uint16(7080)
	proxyUID      = uint32(2102)
	loopback      = netip.MustParseAddr("127.0.0.1")
	quotesPath    = "/api/quotes"
)

// demo is one run's state.
type demo struct {
	o       Options
	s       *steps
	topo    *netns.Topology
	web     *netns.Pod
	procs   *processes
	fwds    []*forwarder
	webProc *process
	control *controlServer

	// mu orders the changes detour demo scale and fault make while the demo runs.
	mu         sync.Mutex
	stock      []*netns.Pod
	stockProcs map[*netns.Pod]*process
	proxyProcs map[*netns.Pod]*process
	tokens     map[*netns.Pod]string
	nextStock  int // the index of the next StockData replica's name
	disc       string
}

// Run builds the node, shows StockWeb's 100 calls without and then with the mesh, keeps
// running with forwarders from the host's loopback until ctx ends or Duration passes, and
// removes everything it made before returning.
func Run(ctx context.Context, o Options) (err error) {
	if o.Replicas <= 0 {
		o.Replicas = 2
	}
	if o.Port == 0 {
		o.Port = 8000
	}
	if o.Balancer == "" {
		o.Balancer = "round-robin"
	}
	if o.DashboardPort == 0 {
		o.DashboardPort = 7080
	}
	if o.Control == "" {
		o.Control = ControlSocket
	}
	if o.Bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Bin = filepath.Dir(exe)
	}
	for _, b := range []string{"detour", "detour-controller", "stockdata", "stockweb"} {
		if _, err := os.Stat(filepath.Join(o.Bin, b)); err != nil {
			return fmt.Errorf("%s is missing from %s: build it with `make build`", b, o.Bin)
		}
	}
	logs, err := os.MkdirTemp("", "detour-demo-logs-")
	if err != nil {
		return err
	}
	d := &demo{o: o, s: &steps{out: o.Out, json: o.JSON}, procs: &processes{logs: logs},
		stockProcs: map[*netns.Pod]*process{}, proxyProcs: map[*netns.Pod]*process{}, tokens: map[*netns.Pod]string{}}
	defer func() {
		cleanErr := d.cleanup()
		if err == nil {
			err = cleanErr
			os.RemoveAll(logs)
		} else {
			d.s.say("process logs are kept in " + logs)
		}
	}()
	d.s.say("StockKube on one node: StockWeb makes 100 concurrent gRPC calls to StockData over ONE connection.\n")
	if err := d.build(ctx); err != nil {
		return err
	}
	if err := d.show(ctx, "without the mesh: kube-proxy balances connections, so the one connection sticks to one replica"); err != nil {
		return err
	}
	if !o.NoMesh {
		if err := d.mesh(ctx); err != nil {
			return err
		}
		if err := d.show(ctx, "with the mesh: Detour balances every call over every replica"); err != nil {
			return err
		}
		if err := d.s.do("checking that StockWeb -> StockData is mutual TLS", d.showTLS); err != nil {
			return err
		}
	}
	if err := d.forward(); err != nil {
		return err
	}
	if !o.NoMesh {
		if d.control, err = d.serveControl(ctx); err != nil {
			return err
		}
	}
	return d.wait(ctx)
}

func (d *demo) build(ctx context.Context) error {
	if err := d.s.do("sweeping what an earlier run left", func() (string, error) {
		gone, err := netns.Sweep(Prefix)
		if len(gone) == 0 {
			return "nothing left over", err
		}
		return "removed " + strings.Join(gone, ", "), err
	}); err != nil {
		return err
	}
	if err := d.s.do(fmt.Sprintf("building the node: bridge dt0, pods stockweb and %d StockData replicas, service %s", d.o.Replicas, vip4), func() (string, error) {
		var err error
		if d.topo, err = netns.NewTopology(Prefix); err != nil {
			return "", err
		}
		if d.web, err = d.topo.AddPod("stockweb"); err != nil {
			return "", err
		}
		var b4, b6 []netip.AddrPort
		var lines []string
		for range d.o.Replicas {
			p, err := d.topo.AddPod(fmt.Sprintf("stockdata-%d", d.nextStock))
			if err != nil {
				return "", err
			}
			d.nextStock++
			d.stock = append(d.stock, p)
			b4 = append(b4, netip.AddrPortFrom(p.IPv4, stockPort))
			b6 = append(b6, netip.AddrPortFrom(p.IPv6, stockPort))
			lines = append(lines, fmt.Sprintf("%s %s", p.Name, p.IPv4))
		}
		if err := d.topo.AddService(vip4, b4); err != nil {
			return "", err
		}
		if err := d.topo.AddService(vip6, b6); err != nil {
			return "", err
		}
		return fmt.Sprintf("stockweb %s, %s", d.web.IPv4, strings.Join(lines, ", ")), nil
	}); err != nil {
		return err
	}
	if err := d.s.do("starting the StockData replicas", func() (string, error) {
		for _, p := range d.stock {
			if err := d.startStock(ctx, p, 0); err != nil {
				return "", err
			}
		}
		return "", d.waitTCP(ctx, d.stock, stockPort)
	}); err != nil {
		return err
	}
	return d.startWeb(ctx, "starting StockWeb: one gRPC connection to "+vip4.String())
}

// startStock runs StockData in p, answering fail of its calls UNAVAILABLE.
func (d *demo) startStock(ctx context.Context, p *netns.Pod, fail float64) error {
	args := []string{"--listen", fmt.Sprintf(":%d", stockPort), "--id", p.Name}
	if fail > 0 {
		args = append(args, "--fail", strconv.FormatFloat(fail, 'f', -1, 64))
	}
	proc, err := d.procs.start(ctx, p, "stockdata", -1, filepath.Join(d.o.Bin, "stockdata"), args...)
	if err != nil {
		return err
	}
	d.stockProcs[p] = proc
	return nil
}

// startProxy runs the detour proxy sidecar in p, as an injector would.
func (d *demo) startProxy(ctx context.Context, p *netns.Pod) error {
	id := stockID
	if p == d.web {
		id = webID
	}
	// As the Kubernetes injector does, the proxy is told which pod it serves, so that
	// detour debug finds it by name and the controller's dashboard names it.
	args := []string{"proxy", "--drain-timeout", "1s", "--discovery", "controller:" + controllerAddr.String(),
		"--identity", id, "--trust-anchor", filepath.Join(d.procs.logs, "ca.crt"), "--identity-token", d.tokens[p],
		"--pod-name", p.Name, "--pod-namespace", podNamespace}
	if d.o.ReportInterval > 0 {
		args = append(args, "--report-interval", d.o.ReportInterval.String())
	}
	proc, err := d.procs.start(ctx, p, "proxy", int(proxyUID), filepath.Join(d.o.Bin, "detour"), args...)
	if err != nil {
		return err
	}
	d.proxyProcs[p] = proc
	return nil
}

func (d *demo) startWeb(ctx context.Context, what string) error {
	return d.s.do(what, func() (string, error) {
		var err error
		d.webProc, err = d.procs.start(ctx, d.web, "stockweb", -1, filepath.Join(d.o.Bin, "stockweb"),
			"--listen", fmt.Sprintf(":%d", webPort), "--stockdata", vip4.String())
		if err != nil {
			return "", err
		}
		return "", d.waitHealthy(ctx, d.web, webPort)
	})
}

// waitHealthy waits for an HTTP 200 from /healthz, asked on the pod's loopback as a kubelet's
// exec probe would: once a pod is meshed its inbound proxy accepts connections before the app
// listens, so a TCP connect from outside proves nothing, and each probe through it while the
// app is down would count as a failed request in the pod's metrics and the dashboard.
func (d *demo) waitHealthy(ctx context.Context, p *netns.Pod, port uint16) error {
	return d.waitOKVia(ctx, p, p.NS, fmt.Sprintf("http://%s/healthz", netip.AddrPortFrom(loopback, port)))
}

// Workload identities of the demo's pods, all in one Kubernetes-like namespace.
var (
	podNamespace = "stocks"
	webID        = "spiffe://cluster.local/ns/stocks/sa/stockweb"
	stockID      = "spiffe://cluster.local/ns/stocks/sa/stockdata"
	// The controller runs on the node, reachable from every pod at the bridge's address.
	controllerAddr = netip.MustParseAddrPort("198.18.0.1:7086")
)

// mesh starts the controller, installs Detour in every pod, as an injected sidecar would, and
// restarts StockWeb so its connection is made through its proxy (Kubernetes restarts pods when
// it injects sidecars).
func (d *demo) mesh(ctx context.Context) error {
	disc, err := d.discoveryFile()
	if err != nil {
		return err
	}
	pods := append([]*netns.Pod{d.web}, d.stock...)
	if err := d.s.do("starting the controller on the node: trust anchor, identities, discovery, dashboard", func() (string, error) {
		return d.startController(ctx, disc, pods, d.tokens)
	}); err != nil {
		return err
	}
	if err := d.s.do("detour init in every pod: redirect rules installed and proven", func() (string, error) {
		for _, p := range pods {
			if _, err := d.procs.run(ctx, p, filepath.Join(d.o.Bin, "detour"), "init", "-o", "json",
				"--pod-name", p.Name, "--pod-namespace", podNamespace); err != nil {
				return "", fmt.Errorf("init in %s: %w", p.Name, err)
			}
		}
		return fmt.Sprintf("%d pods, IPv4 and IPv6", len(pods)), nil
	}); err != nil {
		return err
	}
	if err := d.s.do("starting a detour proxy sidecar in every pod, as UID 2102", func() (string, error) {
		for _, p := range pods {
			if err := d.startProxy(ctx, p); err != nil {
				return "", err
			}
		}
		for _, p := range pods {
			if err := d.waitReady(ctx, p); err != nil {
				return "", err
			}
		}
		return "all proxies ready: each holds a certificate for its identity (/ready on the admin port)", nil
	}); err != nil {
		return err
	}
	if err := d.s.do("stopping StockWeb, so it reconnects through its sidecar", func() (string, error) {
		return "", d.procs.stop(d.webProc)
	}); err != nil {
		return err
	}
	return d.startWeb(ctx, "starting StockWeb again: still one gRPC connection to "+vip4.String())
}

// startController makes the trust domain's CA, one bootstrap token per pod, and runs the
// controller in the node namespace.
func (d *demo) startController(ctx context.Context, disc string, pods []*netns.Pod, tokens map[*netns.Pod]string) (string, error) {
	controller := filepath.Join(d.o.Bin, "detour-controller")
	caDir := filepath.Join(d.procs.logs, "ca")
	if out, err := exec.CommandContext(ctx, controller, "ca", "init", "--dir", caDir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ca init: %w: %s", err, out)
	}
	anchor, err := os.ReadFile(filepath.Join(caDir, "ca.crt"))
	if err != nil {
		return "", err
	}
	// The trust anchor is public; the proxies, running as their own UID, read this copy.
	if err := os.WriteFile(filepath.Join(d.procs.logs, "ca.crt"), anchor, 0o644); err != nil {
		return "", err
	}
	var lines strings.Builder
	for _, p := range pods {
		tok := make([]byte, 16)
		if _, err := rand.Read(tok); err != nil {
			return "", err
		}
		id := stockID
		if p == d.web {
			id = webID
		}
		fmt.Fprintf(&lines, "%x %s\n", tok, id)
		tokens[p] = filepath.Join(d.procs.logs, p.Name+".token")
		// Readable by the proxy's UID alone: a token proves an identity to whoever holds it.
		if err := os.WriteFile(tokens[p], fmt.Appendf(nil, "%x", tok), 0o600); err != nil {
			return "", err
		}
		if err := os.Chown(tokens[p], int(proxyUID), int(proxyUID)); err != nil {
			return "", err
		}
	}
	tokenFile := filepath.Join(caDir, "tokens")
	if err := os.WriteFile(tokenFile, []byte(lines.String()), 0o600); err != nil {
		return "", err
	}
	node := &netns.Pod{Name: "node", NS: d.topo.Node}
	// The dashboard listens on the node's loopback; the demo forwards it to the host's.
	args := []string{"--source", "file:" + disc, "--listen", controllerAddr.String(), "--ca-dir", caDir, "--tokens", tokenFile,
		"--dashboard-listen", netip.AddrPortFrom(loopback, dashboardPort).String()}
	if d.o.CertTTL > 0 {
		args = append(args, "--cert-ttl", d.o.CertTTL.String())
	}
	if _, err := d.procs.start(ctx, node, "controller", -1, controller, args...); err != nil {
		return "", err
	}
	if err := d.waitTCP(ctx, []*netns.Pod{{Name: "node", IPv4: controllerAddr.Addr()}}, controllerAddr.Port()); err != nil {
		return "", err
	}
	return fmt.Sprintf("controller at %s; identities %s and %s", controllerAddr, webID, stockID), nil
}

// discoveryFile writes the StockData service for the StockWeb proxy: both VIPs, every replica.
func (d *demo) discoveryFile() (string, error) {
	var b strings.Builder
	b.WriteString("trustDomain: cluster.local\nservices:\n")
	fmt.Fprintf(&b, "  - name: stockdata.stocks\n    addresses: [%q, %q]\n    protocol: http2\n    balancer: %s\n    endpoints:\n",
		vip4.String(), vip6.String(), d.o.Balancer)
	for _, p := range d.stock {
		fmt.Fprintf(&b, "      - address: %q\n        identity: %s\n        zone: node-1\n", netip.AddrPortFrom(p.IPv4, stockPort).String(), stockID)
	}
	path := filepath.Join(d.procs.logs, "discovery.yaml")
	// Written beside and renamed over, so the controller never reads half a file.
	if err := os.WriteFile(path+".new", []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(path+".new", path); err != nil {
		return "", err
	}
	d.disc = path
	return path, os.Chmod(d.procs.logs, 0o755)
}

// quotes is what the demo reads of StockWeb's /api/quotes.
type quotes struct {
	Counts map[string]int `json:"counts"`
	Calls  int            `json:"calls"`
	Errors int            `json:"errors"`
}

// show loads StockWeb's quotes once (100 calls) and prints the calls per server.
func (d *demo) show(ctx context.Context, title string) error {
	return d.s.do("StockWeb page load: "+title, func() (string, error) {
		client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: d.topo.Node.DialContext}}
		req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s%s", netip.AddrPortFrom(d.web.IPv4, webPort), quotesPath), nil)
		if err != nil {
			return "", err
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var q quotes
		if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
			return "", fmt.Errorf("reading StockWeb's answer: %w", err)
		}
		var b strings.Builder
		tw := tabwriter.NewWriter(&b, 0, 0, 3, ' ', 0)
		fmt.Fprintln(tw, "SERVER\tCALLS\t")
		servers := make([]string, 0, len(d.stock))
		for _, p := range d.stock {
			servers = append(servers, p.Name)
		}
		for s := range q.Counts {
			if !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
		for _, s := range servers {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", s, q.Counts[s], strings.Repeat("#", q.Counts[s]/2))
		}
		tw.Flush()
		if q.Errors > 0 {
			fmt.Fprintf(&b, "%d of %d calls failed\n", q.Errors, q.Calls)
		}
		return b.String(), nil
	})
}

// showTLS reads each StockData proxy's open connections and prints who calls, as its
// certificate proved. /debug/ answers on the pod's loopback only, so it connects from inside
// the pod's namespace, as the debugging CLI does.
func (d *demo) showTLS() (string, error) {
	var lines []string
	for _, p := range d.stock {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: p.NS.DialContext}}
		resp, err := client.Get(fmt.Sprintf("http://%s/debug/connections", netip.AddrPortFrom(loopback, adminPort)))
		if err != nil {
			return "", err
		}
		var conns []struct {
			Direction string `json:"direction"`
			Client    string `json:"client"`
			Protocol  string `json:"protocol"`
			Peer      string `json:"peer_identity"`
		}
		err = json.NewDecoder(resp.Body).Decode(&conns)
		resp.Body.Close()
		if err != nil {
			return "", err
		}
		found := false
		for _, c := range conns {
			if c.Direction == "inbound" && c.Peer == webID {
				lines = append(lines, fmt.Sprintf("%s: %s connection from %s over mutual TLS, the client proved %s", p.Name, c.Protocol, c.Client, c.Peer))
				found = true
			}
		}
		if !found {
			return "", fmt.Errorf("%s's proxy holds no mutual TLS connection from %s", p.Name, webID)
		}
	}
	return strings.Join(lines, "\n"), nil
}

// forward opens the loopback forwarders: StockWeb's page and every proxy's admin port.
func (d *demo) forward() error {
	return d.s.do("forwarding from the host's loopback into the pods (like kubectl port-forward)", func() (string, error) {
		port := d.o.Port
		add := func(name string, via *netns.NS, to netip.AddrPort, path string) error {
			f, err := newForwarder(netip.AddrPortFrom(loopback, port), via, to)
			if err != nil {
				return fmt.Errorf("forwarding %s: %w", name, err)
			}
			f.label = fmt.Sprintf("%-26s http://%s%s", name, f.addr, path)
			d.fwds = append(d.fwds, f)
			port++
			return nil
		}
		if err := add("StockWeb page", d.topo.Node, netip.AddrPortFrom(d.web.IPv4, webPort), "/"); err != nil {
			return "", err
		}
		if !d.o.NoMesh {
			// At its own port, where detour stat, top and dashboard look by default.
			f, err := newForwarder(netip.AddrPortFrom(loopback, d.o.DashboardPort), d.topo.Node, netip.AddrPortFrom(loopback, dashboardPort))
			if err != nil {
				return "", fmt.Errorf("forwarding the dashboard: %w", err)
			}
			f.label = fmt.Sprintf("%-26s http://%s/", "Detour dashboard", f.addr)
			d.fwds = append(d.fwds, f)
		}
		if !d.o.NoMesh {
			for _, p := range append([]*netns.Pod{d.web}, d.stock...) {
				// From the pod's loopback, as kubectl port-forward connects: /debug/ answers there.
				if err := add(p.Name+" proxy metrics", p.NS, netip.AddrPortFrom(loopback, adminPort), "/metrics"); err != nil {
					return "", err
				}
			}
		}
		var lines []string
		for _, f := range d.fwds {
			lines = append(lines, f.label)
		}
		return strings.Join(lines, "\n"), nil
	})
}

func (d *demo) wait(ctx context.Context) error {
	if d.o.Duration > 0 {
		d.s.say(fmt.Sprintf("\nrunning for %s, then cleaning up (Ctrl-C stops sooner)", d.o.Duration))
		select {
		case <-ctx.Done():
		case <-time.After(d.o.Duration):
		}
		return nil
	}
	msg := "\nrunning; reload the StockWeb page to see every call's server. Ctrl-C stops and cleans up."
	if !d.o.NoMesh {
		msg += "\nIn another terminal: `detour stat pod`, `detour demo scale stockdata=3` or `detour demo fault stockdata-1 --fail 0.5`, and watch the dashboard."
	}
	d.s.say(msg)
	<-ctx.Done()
	return nil
}

func (d *demo) cleanup() error {
	if d.control != nil {
		d.control.close()
	}
	// A scale or fault still running (its waits end with the run's context) finishes first.
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range d.fwds {
		f.close()
	}
	var errs []error
	errs = append(errs, d.procs.stopAll())
	if d.topo != nil {
		errs = append(errs, d.s.do("removing every namespace, rule and process of the demo", func() (string, error) {
			return "", d.topo.Close()
		}))
	}
	return errors.Join(errs...)
}

// waitReady waits for a pod's proxy to answer /ready.
func (d *demo) waitReady(ctx context.Context, p *netns.Pod) error {
	return d.waitOK(ctx, p, fmt.Sprintf("http://%s/ready", netip.AddrPortFrom(p.IPv4, adminPort)))
}

// waitOK waits up to 10 s for an HTTP 200 from url, reached from the node.
func (d *demo) waitOK(ctx context.Context, p *netns.Pod, url string) error {
	return d.waitOKVia(ctx, p, d.topo.Node, url)
}

// waitOKVia waits up to 10 s for an HTTP 200 from url, reached from namespace via.
func (d *demo) waitOKVia(ctx context.Context, p *netns.Pod, via *netns.NS, url string) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: via.DialContext, DisableKeepAlives: true}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is not ready after 10s: %w (logs in %s)", p.Name, err, d.procs.logs)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// waitTCP waits until every pod accepts TCP on port.
func (d *demo) waitTCP(ctx context.Context, pods []*netns.Pod, port uint16) error {
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range pods {
		for {
			c, err := d.topo.Node.DialContext(ctx, "tcp", netip.AddrPortFrom(p.IPv4, port).String())
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s does not accept connections on port %d: %w (logs in %s)", p.Name, port, err, d.procs.logs)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(25 * time.Millisecond):
			}
		}
	}
	return nil
}

// steps prints numbered progress with the time each step took, as text or JSON lines.
type steps struct {
	out  io.Writer
	json bool
	n    int
}

// say prints a message that is not a step.
func (s *steps) say(msg string) {
	if s.json {
		json.NewEncoder(s.out).Encode(map[string]string{"message": strings.TrimSpace(msg)})
		return
	}
	fmt.Fprintln(s.out, msg)
}

func (s *steps) do(what string, fn func() (string, error)) error {
	s.n++
	if s.json {
		start := time.Now()
		detail, err := fn()
		rec := map[string]any{"step": s.n, "what": what, "seconds": time.Since(start).Seconds(), "detail": strings.TrimRight(detail, "\n")}
		if err != nil {
			rec["error"] = err.Error()
		}
		json.NewEncoder(s.out).Encode(rec)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	fmt.Fprintf(s.out, "[%d] %s ... ", s.n, what)
	start := time.Now()
	detail, err := fn()
	took := time.Since(start).Round(100 * time.Microsecond)
	if err != nil {
		fmt.Fprintf(s.out, "FAILED after %s\n", took)
		return fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(s.out, "%s\n", took)
	if detail = strings.TrimRight(detail, "\n"); detail != "" {
		fmt.Fprintf(s.out, "      %s\n", strings.ReplaceAll(detail, "\n", "\n      "))
	}
	return nil
}
