package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"time"

	"github.com/spf13/cobra"

	"github.com/detourmesh/detour/controller/telemetry"
	"github.com/detourmesh/detour/internal/cmdline"
)

// defaultDashboard is where the controller's dashboard is forwarded to (DESIGN.md: port 7080).
const defaultDashboard = "http://127.0.0.1:7080"

type statFlags struct {
	controller, from, to, output string
	window                       time.Duration
	limit                        int
}

func (f *statFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.controller, "controller", defaultDashboard, "the controller's dashboard URL (detour dashboard forwards it there)")
	fl.DurationVarP(&f.window, "window", "t", time.Minute, "the span the figures cover, 10s to 10m")
	fl.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
}

func newStatCommand() *cobra.Command {
	var f statFlags
	cmd := &cobra.Command{
		Use:   "stat svc|pod|deploy[/NAME]",
		Short: "Success rate, requests per second, latency and mutual TLS share per service, deployment or pod",
		Long: `stat prints what the proxies reported to the controller over the last --window: for each
service (as its callers saw it, with a line per replica that served it), deployment or pod (as it
served its callers): success rate, requests per second, p50/p95/p99 latency and the share of
requests over mutual TLS. --from and --to (KIND/NAME) keep only traffic from or to a resource,
as its callers' proxies saw it. It reads the controller's /api/stat, forwarded to the host by
detour dashboard (the demo forwards it itself). Every flag can also be set as DETOUR_<FLAG_NAME>.`,
		Example: `  detour stat svc
  detour stat pod -t 30s
  detour stat pod --to svc/stockdata.stocks
  detour stat deploy --from deploy/stockweb -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			return runStat(cmd.Context(), cmd.OutOrStdout(), args[0], f)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&f.from, "from", "", "only traffic from this resource, KIND/NAME (e.g. deploy/stockweb)")
	cmd.Flags().StringVar(&f.to, "to", "", "only traffic to this resource, KIND/NAME (e.g. svc/stockdata.stocks)")
	return cmd
}

func runStat(ctx context.Context, w io.Writer, resource string, f statFlags) error {
	if err := cmdline.OutputFormat(f.output); err != nil {
		return err
	}
	q := telemetry.Query{Window: f.window}
	var err error
	if q.Resource, err = telemetry.ParseResource(resource); err != nil {
		return err
	}
	if f.from != "" {
		if q.From, err = telemetry.ParseResource(f.from); err != nil {
			return fmt.Errorf("--from: %w", err)
		}
	}
	if f.to != "" {
		if q.To, err = telemetry.ParseResource(f.to); err != nil {
			return fmt.Errorf("--to: %w", err)
		}
	}
	if f.window < telemetry.Resolution || f.window > telemetry.Window {
		return fmt.Errorf("--window %s: want %s to %s", f.window, telemetry.Resolution, telemetry.Window)
	}
	st, err := (&telemetry.Client{URL: f.controller}).Stat(ctx, q)
	if err != nil {
		return err
	}
	if f.output == "json" {
		return writeJSON(w, st)
	}
	return telemetry.WriteStat(w, st)
}

func newTopCommand() *cobra.Command {
	var f statFlags
	cmd := &cobra.Command{
		Use:   "top",
		Short: "The busiest routes of the mesh: caller pod, service and replica, by requests",
		Long: `top prints the routes that carried the most requests over the last --window, each a caller
pod, the service it called and the replica that served it, with its figures. With --watch it
redraws every interval. It reads the controller's /api/top (see detour stat).
Every flag can also be set as DETOUR_<FLAG_NAME>.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			if err := cmdline.OutputFormat(f.output); err != nil {
				return err
			}
			watch, _ := cmd.Flags().GetDuration("watch")
			c := &telemetry.Client{URL: f.controller}
			for {
				t, err := c.Top(cmd.Context(), f.window, f.limit)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if f.output == "json" {
					err = writeJSON(out, t)
				} else {
					if watch > 0 {
						fmt.Fprint(out, "\033[H\033[2J") // clear the terminal between frames
					}
					err = telemetry.WriteTop(out, t)
				}
				if err != nil || watch <= 0 {
					return err
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(watch):
				}
			}
		},
	}
	f.register(cmd)
	cmd.Flags().IntVar(&f.limit, "limit", 20, "most routes shown")
	cmd.Flags().Duration("watch", 0, "redraw every this long (e.g. 2s); 0: print once")
	return cmd
}

func newDashboardCommand() *cobra.Command {
	var controller, namespace, output string
	var port uint16
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Forward the controller's web dashboard to the host's loopback and print its URL",
		Long: `dashboard prints the URL of the controller's web dashboard. If the dashboard already answers
at --controller (the demo forwards it there), it prints that. Otherwise it runs
"kubectl port-forward" to the detour-controller Deployment in --namespace, so the dashboard
answers on 127.0.0.1:--port, prints the URL and keeps forwarding until Ctrl-C.
Every flag can also be set as DETOUR_<FLAG_NAME>.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdline.BindEnv(cmd); err != nil {
				return err
			}
			if err := cmdline.OutputFormat(output); err != nil {
				return err
			}
			return runDashboard(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), controller, namespace, port, output == "json")
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&controller, "controller", defaultDashboard, "where the dashboard may already answer")
	fl.StringVarP(&namespace, "namespace", "n", "detour", "the controller's namespace, for kubectl port-forward")
	fl.Uint16Var(&port, "port", 7080, "local port kubectl port-forward listens on")
	fl.StringVarP(&output, "output", "o", "text", "output format: text or json ({\"url\": ..., \"forwarding\": ...})")
	return cmd
}

func runDashboard(ctx context.Context, out, errw io.Writer, controller, namespace string, port uint16, asJSON bool) error {
	say := func(url string, forwarding bool) {
		switch {
		case asJSON:
			writeJSON(out, map[string]any{"url": url + "/", "forwarding": forwarding})
		case forwarding:
			fmt.Fprintf(out, "Detour dashboard: %s/ (forwarding until Ctrl-C)\n", url)
		default:
			fmt.Fprintf(out, "Detour dashboard: %s/\n", url)
		}
	}
	if answers(ctx, controller) {
		say(controller, false)
		return nil
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		return fmt.Errorf("the dashboard does not answer at %s and kubectl is not on PATH to forward it from the cluster: run the demo (make demo), or install kubectl", controller)
	}
	cmd := exec.CommandContext(ctx, kubectl, "-n", namespace, "port-forward", "deploy/detour-controller", fmt.Sprintf("%d:7080", port))
	cmd.Stderr = errw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("kubectl port-forward: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.After(30 * time.Second)
	for !answers(ctx, url) {
		select {
		case err := <-done:
			return fmt.Errorf("kubectl port-forward ended: %v", err)
		case <-deadline:
			cmd.Process.Kill()
			<-done
			return errors.New("the forwarded dashboard did not answer within 30s: check the controller runs (kubectl -n " + namespace + " get pods)")
		case <-time.After(200 * time.Millisecond):
		}
	}
	say(url, true)
	<-done
	return nil
}

// answers says whether the dashboard's API answers at base.
func answers(ctx context.Context, base string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/graph", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
