package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/klog/v2"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/api/identitypb"
	"github.com/detourmesh/detour/api/telemetrypb"
	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/controller/dashboard"
	"github.com/detourmesh/detour/controller/destination"
	"github.com/detourmesh/detour/controller/identity"
	"github.com/detourmesh/detour/controller/telemetry"
	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/internal/cmdline"
	"github.com/detourmesh/detour/spiffe"
)

type controllerFlags struct {
	source, listen, caDir, tokens string
	kubeconfig, clusterDomain     string
	certTTL                       time.Duration
	proofLimit                    int
	output, logLevel              string
	kube                          kubeFlags
	dashboardListen               string
	maxSeries                     int
}

func newControllerCommand() *cobra.Command {
	var f controllerFlags
	cmd := &cobra.Command{
		Use:           "detour-controller",
		Short:         "Run the controller: discovery and workload certificates for the proxies, over gRPC with TLS",
		SilenceUsage:  true,
		SilenceErrors: true,
		Long: `detour-controller serves Discovery.Stream (the services of --source: every proxy learns the table
of service addresses, and the endpoints of the services it uses, as deltas) and Identity.Certify (workload
certificates from the CA in --ca-dir, for proxies that prove their identity with a token from
--tokens) on one gRPC port, where proxies also push their request summaries (Telemetry.Report) for the
dashboard on --dashboard-listen. The port serves TLS with a certificate the controller issues itself for
spiffe://<trust-domain>/ns/detour/sa/controller; proxies verify it against the CA's ca.crt.
Stream serves only callers that prove an identity: a workload certificate of the CA on the TLS
connection, or a token from --tokens as gRPC metadata "authorization: Bearer <token>" (what
detour proxy sends from its --identity-token file).
Make the CA first with "detour-controller ca init"; a new issuer made later with "detour-controller ca
rotate-issuer" is picked up from --ca-dir without a restart. The token file has one "TOKEN SPIFFE-ID" per line.

With --source kubernetes the services come from the cluster's Services, EndpointSlices and Pods,
proxies prove their identity with a projected ServiceAccount token (audience identity.detour.io)
that the API server reviews (bootstrap tokens from --tokens are still accepted when given), and
the injection webhook serves on --webhook-listen, keeping the MutatingWebhookConfiguration
detour-injector's CA bundle and namespace selectors current.
-o selects the log format. Every flag can also be set as DETOUR_<FLAG_NAME>, e.g. DETOUR_CA_DIR.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			return runController(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.source, "source", "", "where services come from: file:PATH (a discovery file, followed as it changes) or kubernetes (Services, EndpointSlices and Pods of the cluster)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "with --source kubernetes: a kubeconfig file; empty: the in-cluster configuration (the pod's ServiceAccount), or $KUBECONFIG")
	fl.StringVar(&f.clusterDomain, "cluster-domain", "cluster.local", "with --source kubernetes: the cluster's DNS domain, for the services' names")
	fl.StringVar(&f.listen, "listen", ":7086", "gRPC address for discovery and identity")
	fl.StringVar(&f.caDir, "ca-dir", "", "directory of the CA made by \"detour-controller ca init\"")
	fl.StringVar(&f.tokens, "tokens", "", "bootstrap token file: one \"TOKEN SPIFFE-ID\" per line")
	fl.DurationVar(&f.certTTL, "cert-ttl", identity.DefaultTTL, "lifetime of the workload certificates issued")
	fl.IntVar(&f.proofLimit, "failed-proof-limit", 10, "failed proofs of identity (no, bad or malformed credentials) one address may make in a minute claiming one identity before that claim is refused there until the minute ends; ten times as many across all claims refuse the address but for identities that proved themselves from it in the last 25 h; a success forgives its own claim (pods behind one address, source NAT or host network, are not locked out by another's failures)")
	fl.StringVarP(&f.output, "output", "o", "text", "log format: text or json")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.dashboardListen, "dashboard-listen", dashboard.DefaultListen, "HTTP address of the dashboard, its JSON under /api/ (what detour stat, top and dashboard read) and the controller's /metrics; loopback by default, reached with detour dashboard; empty: none")
	fl.IntVar(&f.maxSeries, "telemetry-max-series", telemetry.DefaultMaxSeries, "most series (pod, direction, authority, endpoint, peer) the collector keeps in its 10-minute window; each costs at most about 5.7 KiB (8000: 45 MiB)")
	f.kube.register(fl)
	cmd.AddCommand(newControllerCACommand(), newCheckCommand())
	return cmd
}

func runController(ctx context.Context, f controllerFlags) error {
	log, err := cmdline.ServiceLogger(f.output, f.logLevel)
	if err != nil {
		return err
	}
	// client-go logs through klog: into the controller's log, in its format.
	klog.SetSlogLogger(log.With("component", "client-go"))
	onKube := f.source == "kubernetes"
	if f.caDir == "" || (f.tokens == "" && !onKube) {
		return errors.New("--ca-dir and --tokens are required (make a CA with: detour-controller ca init --dir DIR); with --source kubernetes --tokens is optional")
	}
	if f.proofLimit < 1 {
		return fmt.Errorf("--failed-proof-limit %d: want at least 1", f.proofLimit)
	}
	if f.certTTL < time.Second {
		return fmt.Errorf("--cert-ttl %s: want at least 1s", f.certTTL)
	}
	authority, err := ca.Load(f.caDir)
	if err != nil {
		return fmt.Errorf("--ca-dir: %w (make one with: detour-controller ca init --dir %s)", err, f.caDir)
	}
	td := authority.TrustDomain()
	var verifiers identity.Chain
	nTokens := 0
	if f.tokens != "" {
		tokens, err := identity.LoadTokens(f.tokens, td)
		if err != nil {
			return fmt.Errorf("--tokens: %w", err)
		}
		verifiers, nTokens = append(verifiers, tokens), tokens.Len()
	}
	var kc *kubeController
	var src discovery.Source
	var runSource func(context.Context) error
	switch kind, arg, _ := strings.Cut(f.source, ":"); {
	case kind == "file" && arg != "":
		file, err := discovery.NewFile(arg, discovery.FileOptions{Logger: log})
		if err != nil {
			return fmt.Errorf("--source: %w", err)
		}
		src = file
	case onKube:
		if kc, err = newKubeController(ctx, f, authority, log); err != nil {
			return err
		}
		src, runSource = kc.source, kc.run
		verifiers = append(verifiers, kc.reviewer)
	default:
		return fmt.Errorf("--source %q: want file:PATH or kubernetes", f.source)
	}
	tlsConfig, err := authority.ServerTLS(spiffe.ControllerID(td), f.certTTL)
	if err != nil {
		return fmt.Errorf("issuing the controller's own certificate: %w", err)
	}
	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		// Proxies ping every 30 s to notice a lost controller; allow that, refuse floods.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	// One throttle for both services: a caller (address and claimed identity) that keeps
	// failing to prove an identity is refused for a while, whichever service it calls.
	var one identity.Verifier = verifiers
	if len(verifiers) == 1 {
		one = verifiers[0]
	}
	verifier := identity.NewThrottle(one, f.proofLimit, time.Minute, log)
	disc := destination.NewServer(destination.Config{
		Source: src, Auth: identity.NewAuthenticator(authority, verifier), Logger: log,
	})
	discoverypb.RegisterDiscoveryServer(srv, disc)
	// Proxies push their request summaries on the connection they hold for discovery,
	// authenticated the same way (controller/telemetry says why push).
	store := telemetry.NewStore(f.maxSeries, nil)
	tele := telemetry.NewServer(store, identity.NewAuthenticator(authority, verifier), log)
	telemetrypb.RegisterTelemetryServer(srv, tele)
	var web *http.Server
	if f.dashboardListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(store.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		webLis, err := net.Listen("tcp", f.dashboardListen)
		if err != nil {
			return fmt.Errorf("--dashboard-listen: %w", err)
		}
		web = &http.Server{Handler: dashboard.Handler(store, reg, log), ReadHeaderTimeout: 10 * time.Second}
		defer web.Close()
		go func() {
			if err := web.Serve(webLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("serving the dashboard", "err", err)
			}
		}()
		log.Info("dashboard serving", "url", "http://"+webLis.Addr().String()+"/")
	}
	identitypb.RegisterIdentityServer(srv, identity.NewServer(identity.Config{
		CA: authority, Verifier: verifier, TTL: f.certTTL, Logger: log,
	}))

	g, gctx := errgroup.WithContext(ctx)
	if runSource != nil {
		g.Go(func() error { return runSource(gctx) })
	}
	g.Go(func() error { return disc.Run(gctx) })
	g.Go(func() error { tele.Run(gctx); return nil })
	g.Go(func() error { authority.FollowIssuer(gctx, f.caDir, 2*time.Second, log); return nil })
	g.Go(func() error {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serving gRPC: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// disc.Run has returned or is returning, which ends the streams; unary calls finish.
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			srv.Stop()
		}
		return nil
	})
	log.Info("controller serving", "listen", lis.Addr().String(), "trust_domain", td.Name(),
		"trust_anchor_sha256", spiffe.Fingerprint(authority.TrustAnchor().Raw), "tokens", nTokens, "source", f.source,
		"cert_ttl", f.certTTL.String())
	return g.Wait()
}

type caInitFlags struct {
	dir, trustDomain, output string
}

func newControllerCACommand() *cobra.Command {
	caCmd := &cobra.Command{
		Use:   "ca",
		Short: "Manage the controller's certificate authority",
		Args:  cobra.NoArgs,
	}
	var f caInitFlags
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the trust domain's CA: a trust anchor and an issuer, ECDSA P-256",
		Long: `init writes ca.crt and ca.key (the self-signed trust anchor) and issuer.crt and
issuer.key (the intermediate that signs workload certificates) into --dir. Keys are 0600. It never
overwrites an existing CA. Give proxies ca.crt as their trust anchor; keep the keys secret.
Every flag can also be set as DETOUR_<FLAG_NAME>.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			return runCAInit(cmd.OutOrStdout(), f)
		},
	}
	fl := initCmd.Flags()
	fl.StringVar(&f.dir, "dir", "", "directory for the CA files (created 0700 if missing)")
	fl.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "the trust domain, e.g. cluster.local")
	fl.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	var rf caRotateFlags
	rotateCmd := &cobra.Command{
		Use:   "rotate-issuer",
		Short: "Replace the issuer with a new key and certificate under the same trust anchor",
		Long: `rotate-issuer makes a new issuer (issuer.crt, issuer.key) in --dir, signed by the trust anchor,
whose key ca.key must be in --dir for it. Proxies need nothing: they trust the anchor, which does
not change. A controller serving --dir reloads the issuer within seconds and signs every later
certificate with it; certificates of the old issuer stay valid until they expire, and proxies
renew theirs at 70 % of their life. Every flag can also be set as DETOUR_<FLAG_NAME>.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			return runCARotateIssuer(cmd.OutOrStdout(), rf)
		},
	}
	rotateCmd.Flags().StringVar(&rf.dir, "dir", "", "the CA directory (controller --ca-dir), holding ca.key")
	rotateCmd.Flags().StringVarP(&rf.output, "output", "o", "text", "output format: text or json")
	caCmd.AddCommand(initCmd, rotateCmd)
	return caCmd
}

// caReport is the -o json document of ca init.
type caReport struct {
	TrustDomain string     `json:"trust_domain"`
	Dir         string     `json:"dir"`
	TrustAnchor caCertInfo `json:"trust_anchor"`
	Issuer      caCertInfo `json:"issuer"`
}

type caCertInfo struct {
	Path        string    `json:"path"`
	SHA256      string    `json:"sha256"`
	NotAfter    time.Time `json:"not_after"`
	KeyPath     string    `json:"key_path"`
	Description string    `json:"description"`
}

func runCAInit(w io.Writer, f caInitFlags) error {
	if err := cmdline.OutputFormat(f.output); err != nil {
		return err
	}
	if f.dir == "" {
		return errors.New("--dir is required: where to write the CA")
	}
	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err)
	}
	authority, err := ca.Init(f.dir, td)
	if err != nil {
		return err
	}
	dir, _ := filepath.Abs(f.dir)
	return writeCAReport(w, f.output, dir, authority,
		fmt.Sprintf("CA for trust domain %s created in %s", td.Name(), dir),
		fmt.Sprintf("Give proxies %s as their trust anchor. Keep %s and %s secret.",
			filepath.Join(dir, ca.AnchorCertFile), ca.AnchorKeyFile, ca.IssuerKeyFile))
}

type caRotateFlags struct{ dir, output string }

func runCARotateIssuer(w io.Writer, f caRotateFlags) error {
	if err := cmdline.OutputFormat(f.output); err != nil {
		return err
	}
	if f.dir == "" {
		return errors.New("--dir is required: the CA directory (controller --ca-dir)")
	}
	authority, err := ca.RotateIssuer(f.dir)
	if err != nil {
		return err
	}
	dir, _ := filepath.Abs(f.dir)
	return writeCAReport(w, f.output, dir, authority,
		fmt.Sprintf("New issuer for trust domain %s in %s", authority.TrustDomain().Name(), dir),
		fmt.Sprintf("Proxies keep trusting %s; a controller on this directory signs with the new issuer within seconds,\n"+
			"and certificates of the old issuer stay valid until they expire. Take %s offline again.",
			filepath.Join(dir, ca.AnchorCertFile), ca.AnchorKeyFile))
}

// writeCAReport prints the CA in dir (absolute): a table between title and footer, or the
// caReport document for -o json.
func writeCAReport(w io.Writer, output, dir string, authority *ca.CA, title, footer string) error {
	r := caReport{
		TrustDomain: authority.TrustDomain().Name(),
		Dir:         dir,
		TrustAnchor: caCertInfo{
			Path: filepath.Join(dir, ca.AnchorCertFile), KeyPath: filepath.Join(dir, ca.AnchorKeyFile),
			SHA256: spiffe.Fingerprint(authority.TrustAnchor().Raw), NotAfter: authority.TrustAnchor().NotAfter.UTC(),
			Description: "give to every proxy (--trust-anchor)",
		},
		Issuer: caCertInfo{
			Path: filepath.Join(dir, ca.IssuerCertFile), KeyPath: filepath.Join(dir, ca.IssuerKeyFile),
			SHA256: spiffe.Fingerprint(authority.Issuer().Raw), NotAfter: authority.Issuer().NotAfter.UTC(),
			Description: "signs workload certificates (controller --ca-dir)",
		},
	}
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(w, "%s\n\n", title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tCERTIFICATE\tEXPIRES\tSHA-256")
	for _, c := range []struct {
		role string
		info caCertInfo
	}{{"trust anchor", r.TrustAnchor}, {"issuer", r.Issuer}} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s…\n", c.role, filepath.Base(c.info.Path), c.info.NotAfter.Format("2006-01-02"), c.info.SHA256[:16])
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%s\n", footer)
	return nil
}
