package commands

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/detourmesh/detour/debug/check"
)

// Check prints the pod's checklist and returns ErrFailed when any line failed.
func Check(ctx context.Context, e Env, arg string) error {
	t, err := e.target(arg)
	if err != nil {
		return err
	}
	defer t.Close()
	rep := check.Run(ctx, check.Options{Target: t, Proc: e.Finder.Proc, Step: e.step, Now: e.Now})
	if e.JSON {
		if err := e.writeJSON(rep); err != nil {
			return err
		}
	} else {
		writeCheck(e, rep)
	}
	if rep.Failed() {
		return ErrFailed
	}
	return nil
}

func writeCheck(e Env, rep check.Report) {
	fmt.Fprintln(e.Out, rep.Pod)
	tw := tabwriter.NewWriter(e.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
	failed := 0
	for _, l := range rep.Lines {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", l.Check, l.Status, l.Detail)
		if l.Hint != "" {
			fmt.Fprintf(tw, "\t\thint: %s\n", l.Hint) // the last cell: widens no column
		}
		if l.Status == check.Failed {
			failed++
		}
	}
	tw.Flush()
	if failed > 0 {
		fmt.Fprintf(e.Out, "\n%d of %d checks failed\n", failed, len(rep.Lines))
	} else {
		fmt.Fprintf(e.Out, "\nall %d checks passed or were skipped\n", len(rep.Lines))
	}
}
