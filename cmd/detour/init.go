package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/detourmesh/detour/init/apply"
	"github.com/detourmesh/detour/init/plan"
	"github.com/detourmesh/detour/init/verify"
	"github.com/detourmesh/detour/internal/cmdline"
)

type initFlags struct {
	inbound, outbound, admin uint16
	uid                      uint32
	skipIn, skipOut, cidrs   string
	backend, ipv6, output    string
	podName, podNamespace    string
	dryRun, remove, check    bool
	verify                   bool
}

func newInitCommand() *cobra.Command {
	var f initFlags
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install the iptables rules that send the pod's TCP through its proxy, and prove they work",
		Long: `init acts on the network namespace it runs in (an init container, or
ip netns exec POD detour init). It installs Detour's redirect rules for IPv4 and IPv6 in one
transaction per family, then proves them with real connections. --remove takes them out,
--check proves the rules in place without changing them, --dry-run prints them.
Every flag can also be set as DETOUR_<FLAG_NAME>, e.g. DETOUR_PROXY_UID=2102.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			return runInit(cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.Uint16Var(&f.inbound, "inbound-port", plan.DefaultInboundPort, "port of the proxy's inbound listener")
	fl.Uint16Var(&f.outbound, "outbound-port", plan.DefaultOutboundPort, "port of the proxy's outbound listener")
	fl.Uint16Var(&f.admin, "admin-port", plan.DefaultAdminPort, "the proxy's admin port, never redirected")
	fl.Uint32Var(&f.uid, "proxy-uid", plan.DefaultProxyUID, "UID the proxy runs as; its connections are not redirected (0 is refused)")
	fl.StringVar(&f.skipIn, "skip-inbound-ports", "", "inbound ports not redirected, e.g. 22,9000-9100")
	fl.StringVar(&f.skipOut, "skip-outbound-ports", "", "outbound destination ports not redirected")
	fl.StringVar(&f.cidrs, "skip-outbound-cidrs", "", "outbound destinations not redirected, IPv4 or IPv6 CIDRs")
	fl.StringVar(&f.podName, "pod-name", "", "the pod the rules serve, kept in the rules' record so detour debug finds the pod by name even when its proxy is down (Kubernetes: DETOUR_POD_NAME from the downward API)")
	fl.StringVar(&f.podNamespace, "pod-namespace", "", "the pod's namespace, kept with --pod-name (DETOUR_POD_NAMESPACE)")
	fl.StringVar(&f.backend, "backend", "auto", "iptables backend: auto, legacy or nft")
	fl.StringVar(&f.ipv6, "ipv6", "auto", "IPv6 rules: auto (when the namespace has IPv6), on or off")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the rules in iptables-save syntax and change nothing")
	fl.BoolVar(&f.remove, "remove", false, "remove every rule Detour added, and nothing else")
	fl.BoolVar(&f.check, "check", false, "check and prove the rules in place without changing them")
	fl.BoolVar(&f.verify, "verify", true, "prove the redirect after installing; on failure take the rules out again")
	fl.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	return cmd
}

func (f initFlags) config() (plan.Config, error) {
	c := plan.Config{InboundPort: f.inbound, OutboundPort: f.outbound, AdminPort: f.admin, ProxyUID: f.uid,
		PodName: f.podName, PodNamespace: f.podNamespace}
	var err error
	if c.SkipInboundPorts, err = plan.ParsePorts(f.skipIn); err != nil {
		return c, fmt.Errorf("--skip-inbound-ports: %w", err)
	}
	if c.SkipOutboundPorts, err = plan.ParsePorts(f.skipOut); err != nil {
		return c, fmt.Errorf("--skip-outbound-ports: %w", err)
	}
	if c.SkipOutboundCIDRs, err = plan.ParseCIDRs(f.cidrs); err != nil {
		return c, fmt.Errorf("--skip-outbound-cidrs: %w", err)
	}
	return c, c.Validate()
}

// initReport is the -o json document of every init action.
type initReport struct {
	Action  string            `json:"action"`
	Result  *apply.Result     `json:"result,omitempty"`
	Proof   *verify.Report    `json:"proof,omitempty"`
	Restore map[string]string `json:"restore,omitempty"` // --dry-run: family -> iptables-restore input
	Error   string            `json:"error,omitempty"`
}

func runInit(w io.Writer, f initFlags) error {
	if err := cmdline.OutputFormat(f.output); err != nil {
		return err
	}
	modes := 0
	for _, m := range []bool{f.dryRun, f.remove, f.check} {
		if m {
			modes++
		}
	}
	if modes > 1 {
		return fmt.Errorf("--dry-run, --remove and --check exclude each other")
	}
	c, err := f.config()
	if err != nil {
		return err
	}
	log := newLogger(slog.LevelWarn)
	if f.output == "text" {
		log = newLogger(slog.LevelInfo)
	}
	var proof *verify.Report
	opts := apply.Options{Backend: f.backend, IPv6: f.ipv6, Log: log}
	if f.verify || f.check {
		opts.Verify = func(fams []plan.Family) error {
			r := verify.Prove(c, fams)
			proof = &r
			return r.Err()
		}
	}
	rep := initReport{}
	switch {
	case f.dryRun:
		rep.Action = "dry-run"
		fams, err := apply.Families(f.ipv6)
		if err != nil {
			return err
		}
		if f.output == "text" {
			_, err := io.WriteString(w, plan.DryRun(c, fams))
			return err
		}
		rep.Restore = map[string]string{}
		for _, fam := range fams {
			rep.Restore[fam.String()] = plan.Build(c, fam).Install(nil)
		}
		return writeJSON(w, rep)
	case f.remove:
		rep.Action = "remove"
		var res apply.Result
		res, err = apply.Remove(opts)
		rep.Result = &res
	case f.check:
		rep.Action = "check"
		var res apply.Result
		res, err = apply.Check(c, opts)
		rep.Result = &res
	default:
		rep.Action = "install"
		var res apply.Result
		res, err = apply.Install(c, opts)
		rep.Result = &res
	}
	rep.Proof = proof
	if f.output == "json" {
		if err != nil {
			rep.Error = err.Error()
		}
		if werr := writeJSON(w, rep); werr != nil {
			return werr
		}
		if err != nil {
			return cmdline.ExitError{Code: 1}
		}
		return nil
	}
	writeInitText(w, rep, err)
	return err
}

func writeInitText(w io.Writer, rep initReport, err error) {
	res := rep.Result
	switch {
	case err != nil:
	case rep.Action == "install":
		fmt.Fprintf(w, "installed %s redirect rules with iptables-%s in %s (%s)\n",
			strings.Join(res.Families, " and "), res.Backend, res.Duration.Round(100_000), res.Reason)
	case rep.Action == "remove" && len(res.Removed) == 0:
		fmt.Fprintln(w, "no Detour rules to remove")
	case rep.Action == "remove":
		fmt.Fprintf(w, "removed Detour's rules from %s\n", strings.Join(res.Removed, ", "))
	case rep.Action == "check":
		fmt.Fprintf(w, "%s rules in place with iptables-%s match the plan\n", strings.Join(res.Families, " and "), res.Backend)
	}
	if rep.Proof != nil && len(rep.Proof.Steps) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FAMILY\tPROOF\tRESULT\tDETAIL")
		for _, s := range rep.Proof.Steps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Family, s.Name, s.Status, s.Detail)
		}
		tw.Flush()
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
