package telemetry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"
)

// Client reads the controller's /api/ (controller/dashboard), for detour stat and top.
type Client struct {
	URL  string // the dashboard's base URL, e.g. http://127.0.0.1:7080
	HTTP *http.Client
}

func (c *Client) get(ctx context.Context, path string, q url.Values, into any) error {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	u := strings.TrimRight(c.URL, "/") + path + "?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("reaching the controller's dashboard at %s: %w (is it forwarded? run detour dashboard, or pass --controller)", c.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("the controller: %s", e.Error)
		}
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("reading %s: %w", u, err)
	}
	return nil
}

// Stat asks the controller for q.
func (c *Client) Stat(ctx context.Context, q Query) (Stat, error) {
	v := url.Values{"resource": {q.Resource.String()}, "window": {window(q.Window).String()}}
	if q.From.Kind != "" {
		v.Set("from", q.From.String())
	}
	if q.To.Kind != "" {
		v.Set("to", q.To.String())
	}
	var st Stat
	return st, c.get(ctx, "/api/stat", v, &st)
}

// TopRoutes is /api/top's answer.
type TopRoutes struct {
	Window string  `json:"window"`
	Routes []Route `json:"routes"`
}

// Top asks the controller for the busiest routes.
func (c *Client) Top(ctx context.Context, w time.Duration, limit int) (TopRoutes, error) {
	var t TopRoutes
	return t, c.get(ctx, "/api/top", url.Values{"window": {window(w).String()}, "limit": {fmt.Sprint(limit)}}, &t)
}

// WriteStat prints st as an aligned table, like linkerd viz stat: one line per resource, a
// service's replicas beneath it.
func WriteStat(w io.Writer, st Stat) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "NAME\tSUCCESS\tRPS\tLATENCY_P50\tLATENCY_P95\tLATENCY_P99\tMTLS\t")
	line := func(name string, f Figures) {
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t\n", name, percent(f.SuccessRate), f.RPS, millis(f.P50), millis(f.P95), millis(f.P99), percent(f.MTLSShare))
	}
	for _, r := range st.Rows {
		n := r.Name
		if r.Namespace != "" {
			n = r.Namespace + "/" + r.Name
		}
		line(n, r.Figures)
		for _, rep := range r.Replicas {
			line("  "+rep.Name, rep.Figures)
		}
	}
	if len(st.Rows) == 0 {
		fmt.Fprintln(tw, "(no traffic reported in the window)\t\t\t\t\t\t\t")
	}
	return tw.Flush()
}

// WriteTop prints the busiest routes as a table.
func WriteTop(w io.Writer, t TopRoutes) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tREPLICA\tSUCCESS\tRPS\tLATENCY_P99\tMTLS")
	for _, r := range t.Routes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%s\t%s\n", r.From, r.Authority, r.To, percent(r.SuccessRate), r.RPS, millis(r.P99), percent(r.MTLSShare))
	}
	if len(t.Routes) == 0 {
		fmt.Fprintln(tw, "(no traffic reported in the window)")
	}
	return tw.Flush()
}

func percent(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", *v*100)
}

func millis(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.1fms", *v)
}
