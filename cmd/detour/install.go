package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/deploy"
)

type installFlags struct {
	caDir, trustDomain          string
	proxyImage, controllerImage string
}

func newInstallCommand() *cobra.Command {
	var f installFlags
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Print every manifest Detour's control plane needs, for kubectl apply -f -",
		Long: `install prints the kustomize base in deploy/ (namespace detour, the controller's ServiceAccount,
RBAC, Service and Deployment, the MutatingWebhookConfiguration detour-injector) followed by the
Secret detour-ca holding the trust anchor and the issuer (ca.crt, issuer.crt, issuer.key):

    detour install | kubectl apply -f -

Without --ca-dir it makes a new CA in memory; the trust anchor's key is not kept, so its issuer
cannot be rotated later: for that, make the CA with detour-controller ca init --dir DIR, keep
DIR/ca.key safe, and pass --ca-dir DIR (the anchor key is never put in the Secret).
kubectl apply -k deploy/ applies the same objects but the Secret.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runInstall(cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.caDir, "ca-dir", "", "an existing CA (detour-controller ca init) for the Secret; empty: make one in memory")
	fl.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "the trust domain of a CA made in memory")
	fl.StringVar(&f.proxyImage, "proxy-image", deploy.ProxyImage, "the image the webhook injects (detour-init, detour-proxy)")
	fl.StringVar(&f.controllerImage, "controller-image", deploy.ControllerImage, "the controller's image")
	return cmd
}

func runInstall(out, report io.Writer, f installFlags) error {
	files, err := deploy.Base()
	if err != nil {
		return err
	}
	secret, err := caSecret(report, f)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	for _, file := range files {
		data := file.Data
		// The base names its images once each; flags replace them as kustomize's images: would.
		data = bytes.ReplaceAll(data, []byte("image: "+deploy.ControllerImage), []byte("image: "+f.controllerImage))
		data = bytes.ReplaceAll(data, []byte("--proxy-image="+deploy.ProxyImage), []byte("--proxy-image="+f.proxyImage))
		fmt.Fprintf(&b, "---\n# deploy/%s\n", file.Name)
		b.Write(data)
	}
	b.WriteString("---\n")
	b.Write(secret)
	_, err = out.Write(b.Bytes())
	return err
}

// caSecret is the detour-ca Secret for the CA in f.caDir, or for a new one made in memory.
func caSecret(report io.Writer, f installFlags) ([]byte, error) {
	dir := f.caDir
	if dir == "" {
		td, err := spiffeid.TrustDomainFromString(f.trustDomain)
		if err != nil {
			return nil, fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err)
		}
		tmp, err := os.MkdirTemp("", "detour-install-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = filepath.Join(tmp, "ca")
		if _, err := ca.Init(dir, td); err != nil {
			return nil, err
		}
		fmt.Fprintf(report, "detour install: made a new CA for trust domain %s; its anchor key is not kept (use --ca-dir to keep one)\n", td.Name())
	} else if _, err := ca.Load(dir); err != nil {
		return nil, fmt.Errorf("--ca-dir: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `# The trust anchor and the issuer the controller signs workload certificates with.
apiVersion: v1
kind: Secret
metadata:
  name: %s
  namespace: %s
  labels:
    app.kubernetes.io/part-of: detour
type: Opaque
data:
`, deploy.CASecret, deploy.Namespace)
	for _, name := range []string{ca.AnchorCertFile, ca.IssuerCertFile, ca.IssuerKeyFile} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("--ca-dir %s has no %s", dir, name)
			}
			return nil, err
		}
		fmt.Fprintf(&b, "  %s: %s\n", name, base64.StdEncoding.EncodeToString(data))
	}
	return b.Bytes(), nil
}
