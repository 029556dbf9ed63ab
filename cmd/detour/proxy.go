package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/detourmesh/detour/api/telemetrypb"
	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/init/plan"
	"github.com/detourmesh/detour/internal/cmdline"
	"github.com/detourmesh/detour/proxy"
	"github.com/detourmesh/detour/proxy/identity"
	"github.com/detourmesh/detour/proxy/mtls"
	"github.com/detourmesh/detour/proxy/report"
	"github.com/detourmesh/detour/proxy/resolve"
	"github.com/detourmesh/detour/spiffe"
)

type proxyFlags struct {
	outbound, inbound, admin uint16
	discovery                string
	opaquePorts              string
	loopbackPorts            string
	detectTimeout, drain     time.Duration
	resolveTimeout           time.Duration
	metricsRetain            time.Duration
	reportInterval           time.Duration
	maxConns                 int
	cores                    int
	logLevel, output         string

	identity, trustAnchor, token string
	trustAnchorPEM               string
	policy, portPolicy, allow    string
	probePaths                   string

	podName, podNamespace, podServiceAccount string
	zone                                     string
}

func newProxyCommand() *cobra.Command {
	var f proxyFlags
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the sidecar proxy: balance every HTTP/2 stream and HTTP/1 request, relay the rest",
		Long: `proxy serves the connections detour init redirects to it. Run it as the proxy UID
(2102 by default) with no capabilities. SIGTERM drains: the inbound side stops accepting and
sends GOAWAY, the outbound side keeps serving; the proxy exits 0 once no client connection is
left, or at --drain-timeout.
Every flag can also be set as DETOUR_<FLAG_NAME>, e.g. DETOUR_DISCOVERY=file:/etc/detour/discovery.yaml.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			return runProxy(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.Uint16Var(&f.outbound, "outbound-port", plan.DefaultOutboundPort, "outbound listener port")
	fl.Uint16Var(&f.inbound, "inbound-port", plan.DefaultInboundPort, "inbound listener port")
	fl.Uint16Var(&f.admin, "admin-port", plan.DefaultAdminPort, "admin port: /live, /ready, /metrics for anyone; /debug/* and /shutdown from the pod's loopback only")
	fl.StringVar(&f.discovery, "discovery", "", "where services come from: file:PATH, or controller:HOST:PORT (needs --trust-anchor and --identity-token; until its first snapshot the proxy relays every connection to its original destination and /ready says so); empty: none, every connection is relayed untouched")
	fl.StringVar(&f.opaquePorts, "opaque-ports", portList(proxy.DefaultOpaquePorts), "ports relayed as TCP without protocol detection (server-speaks-first protocols)")
	fl.StringVar(&f.loopbackPorts, "inbound-loopback-ports", "", "inbound ports forwarded to the app on 127.0.0.1, for apps that listen on loopback only; every other port goes to the pod address the client dialled, so what the app bound to loopback stays private to the pod (e.g. 6379,9000-9100)")
	fl.DurationVar(&f.detectTimeout, "detect-timeout", time.Second, "longest wait for a client's first bytes before relaying as TCP")
	fl.DurationVar(&f.drain, "drain-timeout", 30*time.Second, "longest the outbound side keeps serving after SIGTERM; the proxy exits sooner once no client connection is left")
	fl.DurationVar(&f.resolveTimeout, "resolve-timeout", 2*time.Second, "with --discovery controller:, longest wait of the first connection to a service for its endpoints; past it the service's requests fail (503, gRPC UNAVAILABLE) until they arrive")
	fl.DurationVar(&f.metricsRetain, "metrics-retain", 10*time.Minute, "how long the metric series of an endpoint gone from discovery stay in /metrics before they are deleted")
	fl.DurationVar(&f.reportInterval, "report-interval", report.DefaultInterval, "with --discovery controller:, how often the proxy pushes its request summary to the controller (detour stat, the dashboard)")
	fl.IntVar(&f.maxConns, "max-connections", 0, "client connections served at once, both directions; past it new ones are reset, counted in detour_tcp_connections_refused_total and logged at most every 10 s. 0: what RLIMIT_NOFILE allows at 6 files a connection, at most 100000")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVarP(&f.output, "output", "o", "text", "log format: text or json")
	fl.IntVar(&f.cores, "cores", 1, "CPUs the proxy runs Go code on at once; 0: Go's default (every CPU the process may use, or $GOMAXPROCS). Without --cores or DETOUR_CORES, a GOMAXPROCS environment variable wins over the default of 1")
	fl.StringVar(&f.identity, "identity", "", "this workload's SPIFFE ID; with it the proxy gets a certificate from the controller and speaks mutual TLS to meshed peers")
	fl.StringVar(&f.trustAnchor, "trust-anchor", "", "PEM file of the trust anchors (the controller CA's ca.crt), to verify the controller")
	fl.StringVar(&f.token, "identity-token", "", "file holding the proof of identity (a bootstrap token) the controller asks for certificates and discovery; required with --discovery controller:")
	fl.StringVar(&f.policy, "policy", "permissive", "inbound policy: permissive (plaintext from unmeshed clients accepted) or strict (mesh TLS only)")
	fl.StringVar(&f.portPolicy, "port-policy", "", "per-port policy, e.g. 8080=strict,9090=permissive")
	fl.StringVar(&f.probePaths, "probe-paths", "", "kubelet probe paths let through in plaintext on strict ports, \"PORT/PATH PORT/PATH ...\" (the injector sets it from the pod's probes)")
	fl.StringVar(&f.trustAnchorPEM, "trust-anchor-pem", "", "the trust anchors as PEM text instead of a file (the injector sets DETOUR_TRUST_ANCHOR_PEM)")
	fl.StringVar(&f.podName, "pod-name", "", "the pod this proxy serves, for its logs, /debug/proxy and detour debug (the injector sets DETOUR_POD_NAME from the downward API)")
	fl.StringVar(&f.podNamespace, "pod-namespace", "", "the pod's namespace, likewise (DETOUR_POD_NAMESPACE)")
	fl.StringVar(&f.podServiceAccount, "pod-service-account", "", "the pod's ServiceAccount, for its logs (the injector sets it)")
	fl.StringVar(&f.zone, "zone", "", "the topology zone the proxy runs in; with it, services whose endpoints all carry zone hints (EndpointSlice hints.forZones, forZones in the discovery file) are balanced over those hinted for this zone (the injector sets DETOUR_ZONE from the pod's topology.kubernetes.io/zone label)")
	fl.StringVar(&f.allow, "allow", "", "per-port allow-lists of client identities, e.g. 8080=spiffe://cluster.local/ns/web/sa/stockweb;9000=...")
	return cmd
}

// proxyGCPercent is the proxy's default GOGC. A sidecar's live heap is small (about 2 MiB) and
// its RSS is mostly its binary; collecting at 50 % growth instead of 100 % keeps it about 2 MiB
// smaller under load for no CPU cost measurable at 1000 requests/s (make bench). GOGC overrides.
const proxyGCPercent = 50

func runProxy(cmd *cobra.Command, f proxyFlags) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(proxyGCPercent)
	}
	switch {
	case f.cores < 0:
		return fmt.Errorf("--cores must not be negative")
	case f.cores > 0 && (cmd.Flags().Changed("cores") || os.Getenv("GOMAXPROCS") == ""):
		// One core by default, as linkerd2-proxy runs a sidecar: with one P the runtime never
		// wakes a second thread to run a goroutine another one made runnable, and the proxy's
		// share of a node stays predictable. make bench on a 2-vCPU VM: CPU per call the same
		// to 10 % lower than with two, within that machine's noise.
		runtime.GOMAXPROCS(f.cores)
	}
	log, err := cmdline.ServiceLogger(f.output, f.logLevel)
	if err != nil {
		return err
	}
	if f.podName != "" {
		log = log.With("pod", f.podName, "namespace", f.podNamespace)
	}
	ports, err := parsePortList(f.opaquePorts)
	if err != nil {
		return fmt.Errorf("--opaque-ports: %w", err)
	}
	loopbackPorts, err := parsePortList(f.loopbackPorts)
	if err != nil {
		return fmt.Errorf("--inbound-loopback-ports: %w", err)
	}
	if f.detectTimeout <= 0 || f.drain < 0 || f.resolveTimeout <= 0 {
		return fmt.Errorf("--detect-timeout and --resolve-timeout must be positive and --drain-timeout not negative")
	}
	if f.metricsRetain <= 0 || f.maxConns < 0 {
		return fmt.Errorf("--metrics-retain must be positive and --max-connections not negative")
	}
	cfg := proxy.Config{
		OutboundPort: f.outbound, InboundPort: f.inbound, AdminPort: f.admin,
		OpaquePorts: ports, InboundLoopbackPorts: loopbackPorts, DetectTimeout: f.detectTimeout, DrainTimeout: f.drain, ResolveTimeout: f.resolveTimeout, Logger: log,
		MetricsRetain: f.metricsRetain, MaxConnections: f.maxConns,
		Pod: proxy.PodInfo{Name: f.podName, Namespace: f.podNamespace}, DiscoveryName: f.discovery, Zone: f.zone,
	}
	if cfg.Policy, err = mtls.ParsePolicy(f.policy, f.portPolicy, f.allow); err != nil {
		return err
	}
	if cfg.Policy.Probes, err = mtls.ParseProbePaths(f.probePaths); err != nil {
		return fmt.Errorf("--probe-paths: %w", err)
	}
	// The identity client runs beside the proxy; if it stops for good, so does the proxy, and
	// when the proxy ends (a signal, or /shutdown) so does the client.
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	// The controller's connection (discovery, telemetry) outlives the signal: the drain still
	// routes by it, and the last report counts the drain. It ends once the proxy has.
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	defer endLife()
	var anchorCerts []*x509.Certificate
	var id spiffeid.ID
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	switch {
	case f.trustAnchor != "" && f.trustAnchorPEM != "":
		return fmt.Errorf("--trust-anchor and --trust-anchor-pem both given: use one")
	case f.trustAnchor != "":
		if anchorCerts, err = spiffe.LoadTrustAnchors(f.trustAnchor); err != nil {
			return fmt.Errorf("--trust-anchor: %w", err)
		}
	case f.trustAnchorPEM != "":
		if anchorCerts, err = spiffe.ParseTrustAnchors([]byte(f.trustAnchorPEM), "--trust-anchor-pem"); err != nil {
			return fmt.Errorf("--trust-anchor-pem: %w", err)
		}
	}
	if anchorCerts != nil {
		if td, err = spiffe.TrustDomainOf(anchorCerts[0]); err != nil {
			return fmt.Errorf("trust anchor: %w", err)
		}
	}
	kind, arg, _ := strings.Cut(f.discovery, ":")
	var ctrl *resolve.Controller
	if f.identity != "" {
		if id, err = spiffeid.FromString(f.identity); err != nil {
			return fmt.Errorf("--identity %q: %w", f.identity, err)
		}
		if kind != "controller" || anchorCerts == nil || f.token == "" {
			return fmt.Errorf("--identity needs --discovery controller:HOST:PORT, --trust-anchor (or --trust-anchor-pem) and --identity-token")
		}
		client := identity.NewClient(identity.ClientConfig{
			Controller: arg, TrustAnchors: f.trustAnchor, TrustAnchorCerts: anchorCerts, ID: id, TokenFile: f.token, Logger: log,
		})
		g.Go(func() error { return client.Run(ctx) })
		cfg.Identity = client
		cfg.Debug = map[string]func() any{"identity": func() any { return client.Status() }}
	}
	switch {
	case f.discovery == "":
	case kind == "file" && arg != "":
		src, err := discovery.NewFile(arg, discovery.FileOptions{Logger: log})
		if err != nil {
			return fmt.Errorf("--discovery: %w", err)
		}
		cfg.Discovery = src
	case kind == "controller" && arg != "":
		if anchorCerts == nil {
			return fmt.Errorf("--discovery controller:%s needs --trust-anchor (or --trust-anchor-pem) to verify the controller", arg)
		}
		if f.token == "" {
			return fmt.Errorf("--discovery controller:%s needs --identity-token: the controller serves discovery only to proxies that prove their identity with a bootstrap token (one of its --tokens)", arg)
		}
		// Not waiting for the controller: the proxy listens at once and relays what it does not
		// know to its original destination until the first snapshot (/ready says so).
		src, err := resolve.NewController(life, resolve.ControllerOptions{
			Address: arg, TLS: spiffe.ClientTLS(spiffe.Pool(anchorCerts), spiffe.ControllerID(td), time.Now),
			Identity: f.identity, TokenFile: f.token, Logger: log,
		})
		if err != nil {
			return fmt.Errorf("--discovery: %w", err)
		}
		cfg.Discovery = src
		ctrl = src
	default:
		return fmt.Errorf("--discovery %q: want file:PATH or controller:HOST:PORT", f.discovery)
	}
	p := proxy.New(cfg)
	flush, reported := make(chan struct{}), make(chan struct{})
	if ctrl != nil {
		g.Go(func() error {
			defer close(reported)
			return report.Run(life, report.Config{Conn: ctrl.Conn(), Gatherer: p.Metrics().Registry, Interval: f.reportInterval, Logger: log,
				Proxy: &telemetrypb.Proxy{Identity: f.identity, Pod: f.podName, Namespace: f.podNamespace, Addresses: podAddresses()}, Flush: flush})
		})
	} else {
		close(reported)
	}
	g.Go(func() error {
		defer cancel()
		err := p.Run(ctx)
		// Served and drained: the last report tells the controller what, then the connection
		// to it goes.
		close(flush)
		select {
		case <-reported:
		case <-time.After(3 * time.Second):
		}
		endLife()
		return err
	})
	return g.Wait()
}

// podAddresses are the addresses of the pod's interfaces (the proxy runs in the pod's network
// namespace), for the controller to name the endpoints this pod serves.
func podAddresses() []string {
	var out []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() {
			out = append(out, n.IP.String())
		}
	}
	return out
}

// parsePortList expands a list of ports and ranges ("25,9000-9100") as init's flags spell them.
func parsePortList(s string) ([]uint16, error) {
	ranges, err := plan.ParsePorts(s)
	if err != nil {
		return nil, err
	}
	var ports []uint16
	for _, r := range ranges {
		for p := uint32(r.First); p <= uint32(r.Last); p++ {
			ports = append(ports, uint16(p))
		}
	}
	return ports, nil
}

func portList(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}
