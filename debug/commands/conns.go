package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/detourmesh/detour/debug/proxyapi"
)

// Conns lists the connections the pod's proxy holds; with closed, the last ones that ended too.
func Conns(ctx context.Context, e Env, arg string, closed bool) error {
	t, err := e.target(arg)
	if err != nil {
		return err
	}
	defer t.Close()
	_, api, err := proxyOf(t)
	if err != nil {
		return err
	}
	conns, err := api.Connections(ctx, closed)
	if err != nil {
		return err
	}
	if e.JSON {
		return e.writeJSON(struct {
			Pod         string          `json:"pod"`
			Connections []proxyapi.Conn `json:"connections"`
		}{t.Label(), conns})
	}
	fmt.Fprintln(e.Out, t.Label())
	if len(conns) == 0 {
		fmt.Fprintln(e.Out, "no open connections")
		return nil
	}
	now := e.now()
	tw := tabwriter.NewWriter(e.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DIR\tCLIENT\tORIGINAL DST\tPROTOCOL\tAGE\tRECV\tSENT\tSERVICE / TLS PEER")
	for _, c := range conns {
		age, recv, sent := ago(now, c.Since), bytesText(c.BytesReceived), bytesText(c.BytesSent)
		if c.Closed != nil {
			age, recv, sent = "closed "+ago(now, *c.Closed)+" ago", "-", "-"
		}
		who := c.Service
		if c.Peer != "" {
			who = identityPath(c.Peer)
		}
		dir := "out"
		if c.Direction == "inbound" {
			dir = "in"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dir, c.Client, c.Dst, c.Protocol, age, recv, sent, orDash(who))
		if len(c.Endpoints) > 0 {
			parts := make([]string, len(c.Endpoints))
			for i, ep := range c.Endpoints {
				parts[i] = fmt.Sprintf("%s x%d", ep.Address, ep.Requests)
			}
			// Not tab-terminated, so it widens no column.
			fmt.Fprintf(tw, "\t  requests to: %s\n", strings.Join(parts, ", "))
		}
	}
	tw.Flush()
	return nil
}

// Endpoints shows the balancer's view of the pod's services (or of service alone): those whose
// endpoints the proxy follows, or with all every service of its table.
func Endpoints(ctx context.Context, e Env, arg, service string, all bool) error {
	t, err := e.target(arg)
	if err != nil {
		return err
	}
	defer t.Close()
	_, api, err := proxyOf(t)
	if err != nil {
		return err
	}
	doc, err := api.Endpoints(ctx, all || service != "")
	if err != nil {
		return err
	}
	if service != "" {
		var names []string
		for _, s := range doc.Services {
			names = append(names, s.Name)
		}
		doc.Services = slices.DeleteFunc(doc.Services, func(s proxyapi.Service) bool {
			return s.Name != service && !slices.Contains(s.Addresses, service)
		})
		if len(doc.Services) == 0 {
			return fmt.Errorf("%s: its proxy knows no service %q (it knows %s)", t.Label(), service, orDash(strings.Join(names, ", ")))
		}
		doc.Unresolved = 0
	}
	if e.JSON {
		return e.writeJSON(struct {
			Pod string `json:"pod"`
			proxyapi.Endpoints
		}{t.Label(), doc})
	}
	n := fmt.Sprintf("%d services", len(doc.Services))
	if len(doc.Services) == 1 {
		n = "1 service"
	}
	fmt.Fprintf(e.Out, "%s\ndiscovery revision %q, %s\n", t.Label(), doc.Revision, n)
	if doc.Unresolved > 0 {
		fmt.Fprintf(e.Out, "and %d services of the table whose endpoints the proxy does not follow (unused): --all lists them\n", doc.Unresolved)
	}
	for _, s := range doc.Services {
		fmt.Fprintf(e.Out, "\n%s  (%s; %s, %s)\n", s.Name, strings.Join(s.Addresses, ", "), s.Protocol, s.Balancer)
		if s.Unresolved {
			fmt.Fprintln(e.Out, "  endpoints not followed: this pod has not used the service lately")
			continue
		}
		if len(s.Endpoints) == 0 {
			fmt.Fprintln(e.Out, "  no endpoints")
			continue
		}
		// Fields of a newer proxy this client does not know are shown as they are.
		var extra []string
		for _, ep := range s.Endpoints {
			for k := range ep.Other {
				if !slices.Contains(extra, k) {
					extra = append(extra, k)
				}
			}
		}
		slices.Sort(extra)
		tw := tabwriter.NewWriter(e.Out, 0, 0, 2, ' ', 0)
		header := "  ENDPOINT\tIN-FLIGHT\tEWMA\tWEIGHT\tZONE\tIDENTITY"
		for _, k := range extra {
			header += "\t" + strings.ToUpper(strings.ReplaceAll(k, "_", "-"))
		}
		fmt.Fprintln(tw, header)
		for _, ep := range s.Endpoints {
			ewma := "-"
			switch {
			case s.Balancer != "p2c-ewma":
			case ep.Sampled:
				ewma = fmt.Sprintf("%.2fms", ep.RTTms)
			default:
				ewma = fmt.Sprintf("%.2fms (no sample yet)", ep.RTTms)
			}
			line := fmt.Sprintf("  %s\t%d\t%s\t%d\t%s\t%s", ep.Address, ep.InFlight, ewma, ep.Weight, orDash(ep.Zone), identityPath(ep.Identity))
			for _, k := range extra {
				line += "\t" + rawText(ep.Other[k])
			}
			fmt.Fprintln(tw, line)
		}
		tw.Flush()
	}
	return nil
}

// rawText writes a JSON value for a table: strings without quotes, anything else as JSON.
func rawText(v json.RawMessage) string {
	if len(v) == 0 {
		return "-"
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return orDash(s)
	}
	return string(v)
}
