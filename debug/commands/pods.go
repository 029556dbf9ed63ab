package commands

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/detourmesh/detour/debug/pods"
	"github.com/detourmesh/detour/debug/proxyapi"
)

// PodStatus is one line of `detour debug pods`: the pod as /proc shows it, and what its proxy
// says of itself.
type PodStatus struct {
	pods.Pod
	Ref      string `json:"ref"` // how to name it to the other commands
	Ready    *bool  `json:"ready,omitempty"`
	NotReady string `json:"not_ready_reason,omitempty"`
	// CertExpires is the workload certificate's end; nil without an identity.
	CertExpires *time.Time `json:"certificate_not_after,omitempty"`
	// Error says why the admin port could not be read.
	Error string `json:"error,omitempty"`
}

// Pods lists every meshed workload of the node.
func Pods(ctx context.Context, e Env) error {
	done := e.step("finding the node's detour proxies in /proc")
	found, err := e.Finder.Find()
	done()
	if err != nil {
		return err
	}
	out := make([]PodStatus, len(found))
	done = e.step(fmt.Sprintf("asking %d proxies for their state", len(found)))
	parallel(len(found), func(i int) {
		out[i] = status(ctx, e.Finder, found[i])
	})
	done()
	if e.JSON {
		return e.writeJSON(out)
	}
	if len(out) == 0 {
		fmt.Fprintln(e.Out, "no detour proxy runs on this node")
		return nil
	}
	now := e.now()
	tw := tabwriter.NewWriter(e.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tPID\tNETNS\tREADY\tUPTIME\tCERT EXPIRES\tIDENTITY")
	for _, p := range out {
		ready := "?"
		switch {
		case p.Error != "":
			ready = "no answer"
		case p.Ready != nil && *p.Ready:
			ready = "yes"
		case p.Ready != nil:
			ready = "no: " + p.NotReady
		}
		cert := "-"
		if p.CertExpires != nil {
			cert = "in " + short(p.CertExpires.Sub(now))
			if !p.CertExpires.After(now) {
				cert = "EXPIRED " + ago(now, *p.CertExpires) + " ago"
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", podName(p.Pod), p.PID, p.NetNS, ready, ago(now, p.Started), cert, identityPath(p.Identity))
	}
	tw.Flush()
	for _, p := range out {
		if p.Error != "" {
			fmt.Fprintf(e.Err, "detour debug: %s\n", p.Error)
		}
	}
	return nil
}

func podName(p pods.Pod) string {
	if p.Name == "" {
		if p.Namespace != "" {
			return p.Namespace + "/-"
		}
		return "-"
	}
	return p.Ref()
}

func status(ctx context.Context, f pods.Finder, p pods.Pod) PodStatus {
	s := PodStatus{Pod: p, Ref: p.Ref()}
	t, err := f.Resolve(fmt.Sprint(p.PID), []pods.Pod{p})
	if err != nil {
		s.Error = err.Error()
		return s
	}
	defer t.Close()
	api := proxyapi.New(t.NS, p.Flags.AdminPort, p.Label())
	ready, reason, err := api.Ready(ctx)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	s.Ready, s.NotReady = &ready, reason
	if id, ok, err := api.Identity(ctx); err == nil && ok && !id.NotAfter.IsZero() {
		na := id.NotAfter
		s.CertExpires = &na
	}
	return s
}
