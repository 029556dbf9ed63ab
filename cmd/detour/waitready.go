package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/detourmesh/detour/init/plan"
)

// newWaitReadyCommand is the postStart hook of a classic (not native) sidecar: the kubelet
// starts the pod's next container only when the hook returns, so waiting here until the proxy
// is ready keeps the app from starting without it.
func newWaitReadyCommand() *cobra.Command {
	var admin uint16
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait-ready",
		Short: "Wait until the proxy beside this process reports ready on its admin port (a classic sidecar's postStart hook)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return waitReady(ctx, fmt.Sprintf("http://127.0.0.1:%d/ready", admin))
		},
	}
	cmd.Flags().Uint16Var(&admin, "admin-port", plan.DefaultAdminPort, "the proxy's admin port")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after this long")
	return cmd
}

// waitReady polls url every 100 ms until it answers 200 or ctx ends.
func waitReady(ctx context.Context, url string) error {
	client := &http.Client{Timeout: time.Second}
	last := "no answer yet"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else if ctx.Err() == nil {
			last = err.Error() // an attempt cut short by the deadline says nothing new
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the proxy at %s was not ready in time (last: %s)", url, last)
		case <-tick.C:
		}
	}
}
