package main

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/controller/identity"
	"github.com/detourmesh/detour/controller/kube"
	"github.com/detourmesh/detour/controller/webhook"
	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/inject"
)

// kubeFlags are the controller's flags for --source kubernetes.
type kubeFlags struct {
	webhookListen, webhookURL     string
	webhookDNS, webhookIPs        []string
	proxyImage, controllerAddress string
	namespace, sidecar            string
	tokenAudience                 string
}

func (k *kubeFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&k.webhookListen, "webhook-listen", ":8443", "with --source kubernetes: HTTPS address of the injection webhook; empty: no webhook")
	fl.StringVar(&k.webhookURL, "webhook-url", "", "with --source kubernetes: point the webhook configuration at this URL instead of the controller's Service (a controller outside the cluster, for development)")
	fl.StringSliceVar(&k.webhookDNS, "webhook-dns-names", []string{"detour-controller.detour.svc", "detour-controller.detour.svc.cluster.local"}, "host names of the webhook's serving certificate")
	fl.StringSliceVar(&k.webhookIPs, "webhook-ips", nil, "IP addresses of the webhook's serving certificate (with --webhook-url on an address)")
	fl.StringVar(&k.proxyImage, "proxy-image", inject.DefaultImage, "the Detour image the webhook injects (detour-init and detour-proxy)")
	fl.StringVar(&k.controllerAddress, "controller-address", inject.DefaultControllerAddr, "HOST:PORT the injected proxies reach this controller at")
	fl.StringVar(&k.namespace, "namespace", "detour", "the controller's own namespace, never injected")
	fl.StringVar(&k.sidecar, "sidecar", "auto", "how injected proxies run: native (Kubernetes 1.29+), classic, or auto (by the API server's version); a pod's config.detour.io/sidecar annotation wins")
	fl.StringVar(&k.tokenAudience, "token-audience", identity.TokenAudience, "the audience the proxies' ServiceAccount tokens must be for")
}

// kubeController is what --source kubernetes adds to the controller.
type kubeController struct {
	source     *kube.Source
	reviewer   *identity.TokenReviewer
	reconciler *webhook.Reconciler
	server     *http.Server
	listener   net.Listener
	log        *slog.Logger
}

func newKubeController(ctx context.Context, f controllerFlags, authority *ca.CA, log *slog.Logger) (*kubeController, error) {
	client, err := kubeClient(f.kubeconfig)
	if err != nil {
		return nil, err
	}
	td := authority.TrustDomain()
	src, err := kube.New(client, kube.Options{TrustDomain: discovery.TrustDomain(td.Name()), ClusterDomain: f.clusterDomain, Logger: log})
	if err != nil {
		return nil, err
	}
	kc := &kubeController{
		source:   src,
		reviewer: identity.NewTokenReviewer(client.AuthenticationV1().TokenReviews(), td, f.kube.tokenAudience),
		log:      log,
	}
	if f.kube.webhookListen == "" {
		return kc, nil
	}
	anchorPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: authority.TrustAnchor().Raw})
	sidecar, why, err := sidecarMode(ctx, client, f.kube.sidecar)
	if err != nil {
		return nil, err
	}
	log.Info("injected proxies run as "+sidecar+" sidecars", "why", why)
	if kc.reconciler, err = webhook.NewReconciler(client, webhook.ReconcilerOptions{
		CABundle: anchorPEM, Namespace: f.kube.namespace, URL: f.kube.webhookURL, Logger: log,
	}); err != nil {
		return nil, err
	}
	var ips []net.IP
	for _, s := range f.kube.webhookIPs {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("--webhook-ips: %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	tlsConfig, err := authority.ServingTLS(f.kube.webhookDNS, ips, f.certTTL)
	if err != nil {
		return nil, fmt.Errorf("the webhook's serving certificate: %w", err)
	}
	if kc.listener, err = net.Listen("tcp", f.kube.webhookListen); err != nil {
		return nil, fmt.Errorf("--webhook-listen: %w", err)
	}
	h := &webhook.Handler{
		Config: inject.Config{
			Image: f.kube.proxyImage, TrustDomain: td.Name(), ControllerAddr: f.kube.controllerAddress,
			TrustAnchorPEM: string(anchorPEM), Sidecar: sidecar,
		},
		Namespace: kc.reconciler.Namespace,
		Ready:     func() bool { return src.Snapshot() != nil && kc.reconciler.Synced() },
		Logger:    log,
	}
	kc.server = &http.Server{
		Handler: h, TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return kc, nil
}

// run runs the source and, with the webhook, its reconciler and server, until ctx ends.
func (kc *kubeController) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return kc.source.Run(ctx) })
	if kc.server == nil {
		return g.Wait()
	}
	g.Go(func() error { return kc.reconciler.Run(ctx) })
	g.Go(func() error {
		kc.log.Info("injection webhook serving", "listen", kc.listener.Addr().String())
		if err := kc.server.ServeTLS(kc.listener, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving the webhook: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		kc.server.Shutdown(sctx)
		return nil
	})
	return g.Wait()
}

// sidecarMode resolves --sidecar: native sidecars (init containers with restartPolicy Always)
// are on by default from Kubernetes 1.29; older API servers get classic ones.
func sidecarMode(ctx context.Context, client kubernetes.Interface, flag string) (mode, why string, err error) {
	switch flag {
	case inject.Native, inject.Classic:
		return flag, "--sidecar " + flag, nil
	case "auto":
	default:
		return "", "", fmt.Errorf("--sidecar %q: want native, classic or auto", flag)
	}
	v, err := client.Discovery().ServerVersion()
	if err != nil {
		return "", "", fmt.Errorf("asking the API server its version (for --sidecar auto): %w", err)
	}
	major, _ := strconv.Atoi(strings.TrimRight(v.Major, "+"))
	minor, _ := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
	if major > 1 || (major == 1 && minor >= 29) {
		return inject.Native, "the API server is " + v.GitVersion + " (native sidecars from 1.29)", nil
	}
	return inject.Classic, "the API server is " + v.GitVersion + ", older than native sidecars (1.29)", nil
}
