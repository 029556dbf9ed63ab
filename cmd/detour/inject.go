package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/detourmesh/detour/inject"
	"github.com/detourmesh/detour/inject/manifest"
)

type injectFlags struct {
	manual      bool
	trustAnchor string
	cfg         inject.Config
}

func newInjectCommand() *cobra.Command {
	var f injectFlags
	cmd := &cobra.Command{
		Use:   "inject FILE|DIR|- ...",
		Short: "Add Detour to every pod template of Kubernetes YAML (by default the annotation the webhook acts on)",
		Long: `inject reads Kubernetes YAML or JSON (files, directories of *.yaml, *.yml and *.json, or - for
stdin; several documents per file and Lists are fine) and writes it to stdout with Detour added to
every pod template it finds: Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob
(and ReplicationController). By default it only sets the annotation detour.io/inject: enabled on
the template, and the controller's webhook adds the containers when the pods are created:

    detour inject deploy/examples/stockkube/ | kubectl apply -f -

--manual adds the containers themselves (the same patch the webhook computes), for a cluster
without the webhook; it needs the trust anchor (--trust-anchor, the CA's ca.crt).
Injecting twice is injecting once; documents it does not change are written back byte for byte;
a template annotated detour.io/inject: disabled is left alone. What it did goes to stderr.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := manifest.Options{Mode: manifest.Annotate, Config: f.cfg}
			if f.manual {
				o.Mode = manifest.Manual
				if f.trustAnchor == "" {
					return errors.New("--manual needs --trust-anchor FILE: the proxies verify the controller with it (the CA's ca.crt)")
				}
				pem, err := os.ReadFile(f.trustAnchor)
				if err != nil {
					return fmt.Errorf("--trust-anchor: %w", err)
				}
				o.Config.TrustAnchorPEM = string(pem)
			}
			return transformInputs(cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args, o)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.manual, "manual", false, "add the init container and the proxy themselves instead of the annotation")
	fl.StringVar(&f.trustAnchor, "trust-anchor", "", "with --manual: PEM file of the trust anchor (the CA's ca.crt)")
	fl.StringVar(&f.cfg.Image, "proxy-image", inject.DefaultImage, "with --manual: the Detour image of detour-init and detour-proxy")
	fl.StringVar(&f.cfg.ControllerAddr, "controller-address", inject.DefaultControllerAddr, "with --manual: HOST:PORT of the controller for the proxies")
	fl.StringVar(&f.cfg.TrustDomain, "trust-domain", inject.DefaultTrustDomain, "with --manual: the trust domain of the identities")
	fl.StringVar(&f.cfg.Sidecar, "sidecar", inject.Native, "with --manual: native (Kubernetes 1.29 and later) or classic")
	return cmd
}

func newUninjectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "uninject FILE|DIR|- ...",
		Short: "Take Detour out of every pod template of Kubernetes YAML (what inject added)",
		Long: `uninject reads what inject reads and writes it back without the detour.io/inject: enabled
annotation and without Detour's containers and volumes (detour-init, detour-proxy and their
volumes, as inject --manual or the webhook adds them), so it also takes Detour out of the YAML of
injected pods (kubectl get pod -o yaml). What it did goes to stderr.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return transformInputs(cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args, manifest.Options{Mode: manifest.Uninject})
		},
	}
}

// transformInputs transforms every input and writes them to out, one YAML stream: a document
// marker goes between files.
func transformInputs(stdin io.Reader, out, report io.Writer, args []string, o manifest.Options) error {
	if o.Mode == manifest.Manual && o.Config.Sidecar != inject.Native && o.Config.Sidecar != inject.Classic {
		return fmt.Errorf("--sidecar %q: want native or classic", o.Config.Sidecar)
	}
	files, err := expandInputs(args)
	if err != nil {
		return err
	}
	var all bytes.Buffer
	changed := 0
	for _, name := range files {
		var src []byte
		if name == "-" {
			src, err = io.ReadAll(io.LimitReader(stdin, 64<<20+1))
		} else {
			src, err = os.ReadFile(name)
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		res, changes, err := manifest.Transform(src, displayName(name), o)
		if err != nil {
			return err
		}
		if all.Len() > 0 && len(bytes.TrimSpace(res)) > 0 {
			if !bytes.HasSuffix(all.Bytes(), []byte("\n")) {
				all.WriteByte('\n')
			}
			if !bytes.HasPrefix(res, []byte("---")) {
				all.WriteString("---\n")
			}
		}
		all.Write(res)
		for _, c := range changes {
			fmt.Fprintf(report, "%s: %s\n", displayName(name), c)
			if c.Changed {
				changed++
			}
		}
	}
	if _, err := out.Write(all.Bytes()); err != nil {
		return err
	}
	fmt.Fprintf(report, "%d pod template(s) changed\n", changed)
	return nil
}

func displayName(name string) string {
	if name == "-" {
		return "stdin"
	}
	return name
}

// expandInputs turns directories into the YAML and JSON files under them, sorted.
func expandInputs(args []string) ([]string, error) {
	var files []string
	for _, a := range args {
		if a == "-" {
			files = append(files, a)
			continue
		}
		fi, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			files = append(files, a)
			continue
		}
		var found []string
		err = filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && slices.Contains([]string{".yaml", ".yml", ".json"}, strings.ToLower(filepath.Ext(p))) {
				found = append(found, p)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("%s holds no *.yaml, *.yml or *.json file", a)
		}
		slices.Sort(found)
		files = append(files, found...)
	}
	return files, nil
}
