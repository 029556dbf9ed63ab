package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/detourmesh/detour/debug/proxyapi"
	"github.com/detourmesh/detour/proxy/tap"
)

// TapOptions select what Tap shows.
type TapOptions struct {
	Service  string        // only this service (name, authority or original destination)
	Limit    int           // stop after this many requests; 0: no limit
	Duration time.Duration // stop after this long; 0: until ctx ends
}

// Tap streams the requests the pod's proxy serves until the limit, the duration or ctx ends:
// one line each, or (-o json) the tap's own JSON lines. What it says about the stream itself
// (attached, dropped events, the end) goes to Err.
func Tap(ctx context.Context, e Env, arg string, o TapOptions) error {
	t, err := e.target(arg)
	if err != nil {
		return err
	}
	defer t.Close()
	_, api, err := proxyOf(t)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(e.Out)
	enc.SetEscapeHTML(false)
	var n int
	var dropped int64
	err = api.Tap(ctx, proxyapi.TapQuery{Service: o.Service, Limit: o.Limit, Duration: o.Duration}, func(l tap.Line) error {
		switch l.Kind {
		case "start":
			what := "every request"
			if o.Service != "" {
				what = "requests for " + o.Service
			}
			fmt.Fprintf(e.Err, "detour debug: tapping %s of %s; Ctrl-C stops\n", what, t.Label())
			if !e.JSON {
				fmt.Fprintf(e.Out, tapLine, "TIME", "DIR", "REQUEST", "STATUS", "LATENCY", "ENDPOINT", "TLS PEER")
			}
			return nil
		case "dropped":
			dropped = l.Dropped
			fmt.Fprintf(e.Err, "detour debug: %d requests not shown so far: this tap reads more slowly than the proxy serves (narrow it with --service)\n", l.Dropped)
			return nil
		case "end":
			dropped = l.Dropped
			return nil
		}
		n++
		if e.JSON {
			return enc.Encode(l)
		}
		dir := "out"
		if l.Direction == "inbound" {
			dir = "in"
		}
		_, err := fmt.Fprintf(e.Out, tapLine, l.Time.Local().Format("15:04:05.000"), dir, requestText(l),
			statusText(l), latencyText(l.LatencyMS), orDash(l.Endpoint), identityPath(l.Peer))
		return err
	})
	if err != nil && !contextDone(ctx, err) {
		return err
	}
	msg := fmt.Sprintf("detour debug: %d requests shown", n)
	if dropped > 0 {
		msg += fmt.Sprintf(", %d dropped because this tap read too slowly", dropped)
	}
	fmt.Fprintln(e.Err, msg)
	return nil
}

// tapLine lays a request out within 100 columns for the common case (an IPv4 endpoint, a
// peer of the default trust domain); a longer request is cut, a longer peer runs on.
const tapLine = "%-12s %-3s %-22s %-11s %7s %-21s %s\n"

// requestText is a gRPC call's method (its HTTP method is always POST), without its package
// when that is too long, else the HTTP method and path, cut to fit its column.
func requestText(l tap.Line) string {
	const width = 22
	if m := l.GRPCMethod; m != "" {
		if len(m) > width {
			svc, method, _ := strings.Cut(m, "/")
			if i := strings.LastIndexByte(svc, '.'); i >= 0 {
				m = svc[i+1:] + "/" + method
			}
		}
		if r := []rune(m); len(r) > width {
			m = "…" + string(r[len(r)-width+1:]) // the method's end says most
		}
		return m
	}
	s := l.Method + " " + l.Path
	if r := []rune(s); len(r) > width {
		s = string(r[:width-1]) + "…"
	}
	return s
}

// grpcCodes names gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
var grpcCodes = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
	"UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// statusText is a gRPC call's status name (after the HTTP status when that is not 200), else
// the HTTP status; "error" when the request ended before any.
func statusText(l tap.Line) string {
	if l.GRPCStatus != nil {
		code := strconv.Itoa(*l.GRPCStatus)
		if *l.GRPCStatus >= 0 && *l.GRPCStatus < len(grpcCodes) {
			code = grpcCodes[*l.GRPCStatus]
		}
		if l.Status != 200 && l.Status != 0 {
			return strconv.Itoa(l.Status) + " " + code
		}
		return code
	}
	if l.Status != 0 {
		return strconv.Itoa(l.Status)
	}
	if l.Error != "" {
		return "error"
	}
	return "-"
}

// latencyText writes a latency in three significant digits: 0.42ms, 3.50ms, 12.3ms, 456ms, 1.23s.
func latencyText(ms float64) string {
	switch {
	case ms >= 1000:
		return fmt.Sprintf("%.2fs", ms/1000)
	case ms >= 100:
		return fmt.Sprintf("%.0fms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1fms", ms)
	}
	return fmt.Sprintf("%.2fms", ms)
}
