// Package proxyapi reads a proxy's admin port from inside its pod's network namespace: how
// `detour debug` reaches every proxy on a node with nothing exposed on the node itself (the
// admin port's /debug/* documents answer callers on the pod's loopback). The types are the
// documents as the proxy writes them; fields a newer proxy adds are kept, not dropped.
package proxyapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/proxy/tap"
)

// Client reads one proxy's admin port.
type Client struct {
	addr  string // on the pod's loopback
	label string // names the pod in errors
	http  *http.Client
}

// New returns a client for the admin port of the proxy serving ns, named label in errors.
func New(ns *netns.NS, adminPort uint16, label string) *Client {
	return &Client{
		addr:  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), adminPort).String(),
		label: label,
		http: &http.Client{Transport: &http.Transport{
			DialContext:       ns.DialContext,
			DisableKeepAlives: true, // each request dials into the namespace; nothing pooled to leak
		}},
	}
}

// Addr is the admin port's address inside the pod's network namespace.
func (c *Client) Addr() string { return c.addr }

// Error is a failure to read the admin port, naming the pod and what failed.
type Error struct {
	Pod, Path, Addr string
	Err             error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: reading %s from the proxy's admin port %s in its network namespace: %v", e.Pod, e.Path, e.Addr, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Refused reports whether err means nothing listens on the admin port.
func Refused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(op.Err.Error(), "connection refused")
}

// Timeout bounds one request for a document.
const Timeout = 3 * time.Second

func (c *Client) get(ctx context.Context, path string, v any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+c.addr+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, &Error{c.label, path, c.addr, err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, &Error{c.label, path, c.addr, err}
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			return resp.StatusCode, &Error{c.label, path, c.addr, fmt.Errorf("%s answered %s that is not its JSON document: %w", path, resp.Status, err)}
		}
	}
	return resp.StatusCode, nil
}

// Live reads /live: nil when the proxy's admin server answers.
func (c *Client) Live(ctx context.Context) error {
	st, err := c.get(ctx, "/live", nil)
	if err == nil && st != http.StatusOK {
		err = &Error{c.label, "/live", c.addr, fmt.Errorf("status %d", st)}
	}
	return err
}

// Ready reads /ready: whether the proxy is ready and, if not, why.
func (c *Client) Ready(ctx context.Context) (bool, string, error) {
	var doc struct {
		Ready  bool   `json:"ready"`
		Reason string `json:"reason"`
	}
	_, err := c.get(ctx, "/ready", &doc)
	return doc.Ready, doc.Reason, err
}

// Proxy is /debug/proxy.
type Proxy struct {
	PID       int       `json:"pid"`
	Pod       string    `json:"pod"`
	Namespace string    `json:"namespace"`
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	Ready     bool      `json:"ready"`
	NotReady  string    `json:"not_ready_reason"`
	Ports     struct {
		Outbound uint16 `json:"outbound"`
		Inbound  uint16 `json:"inbound"`
		Admin    uint16 `json:"admin"`
	} `json:"ports"`
	Listeners []struct {
		Role    string `json:"role"`
		Address string `json:"address"`
	} `json:"listeners"`
	Discovery struct {
		Source    string     `json:"source"`
		Revision  string     `json:"revision"`
		Services  int        `json:"services"`
		Resolved  int        `json:"resolved"`
		Updated   *time.Time `json:"updated"`
		Connected *bool      `json:"connected"`
		Error     string     `json:"error"`
	} `json:"discovery"`
}

// Proxy reads /debug/proxy. A proxy older than it answers 404: ok is false then.
func (c *Client) Proxy(ctx context.Context) (doc Proxy, ok bool, err error) {
	st, err := c.get(ctx, "/debug/proxy", &doc)
	if st == http.StatusNotFound {
		return Proxy{}, false, nil
	}
	return doc, err == nil, err
}

// Identity is /debug/identity.
type Identity struct {
	ID           string    `json:"id"`
	Ready        bool      `json:"ready"`
	Serial       string    `json:"serial"`
	Issuer       string    `json:"issuer_sha256"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
	RenewAt      time.Time `json:"renew_at"`
	Renewals     int       `json:"renewals"`
	TrustAnchors []string  `json:"trust_anchors"`
	LastError    string    `json:"last_error"`
	LastErrorAt  time.Time `json:"last_error_at"`
}

// Identity reads /debug/identity; ok is false for a proxy without a workload identity.
func (c *Client) Identity(ctx context.Context) (doc Identity, ok bool, err error) {
	st, err := c.get(ctx, "/debug/identity", &doc)
	if st == http.StatusNotFound {
		return Identity{}, false, nil
	}
	return doc, err == nil, err
}

// Conn is one connection of /debug/connections.
type Conn struct {
	ID            uint64     `json:"id"`
	Direction     string     `json:"direction"`
	Client        string     `json:"client"`
	Dst           string     `json:"original_destination"`
	Service       string     `json:"service"`
	Protocol      string     `json:"protocol"`
	Peer          string     `json:"peer_identity"`
	Since         time.Time  `json:"since"`
	Closed        *time.Time `json:"closed"`
	BytesReceived uint64     `json:"bytes_received"`
	BytesSent     uint64     `json:"bytes_sent"`
	Endpoints     []struct {
		Address  string `json:"address"`
		Requests int64  `json:"requests"`
	} `json:"endpoints"`
}

// Connections reads /debug/connections; with closed, the last connections that ended too.
func (c *Client) Connections(ctx context.Context, closed bool) ([]Conn, error) {
	path := "/debug/connections"
	if closed {
		path += "?closed=1"
	}
	var doc []Conn
	_, err := c.get(ctx, path, &doc)
	return doc, err
}

// Endpoints is /debug/endpoints.
type Endpoints struct {
	Revision string    `json:"revision"`
	Services []Service `json:"services"`
	// Unresolved counts the services of the table whose endpoints the proxy does not follow
	// (not used, or not lately); ?all lists them too.
	Unresolved int `json:"unresolved,omitempty"`
}

// Service is one service of /debug/endpoints.
type Service struct {
	Name      string     `json:"name"`
	Addresses []string   `json:"addresses"`
	Protocol  string     `json:"protocol"`
	Balancer  string     `json:"balancer"`
	Endpoints []Endpoint `json:"endpoints"`
	// Unresolved: the proxy does not follow this service's endpoints (listed with all only).
	Unresolved bool `json:"unresolved,omitempty"`
	// Policy is the service's timeouts, retries, budget and accrual, as the proxy wrote them.
	Policy json.RawMessage `json:"policy,omitempty"`
}

// Endpoint is one endpoint of a Service. Other holds the fields this client does not know (a
// newer proxy's endpoint state, ejections...), so that they are shown rather than lost.
type Endpoint struct {
	Address  string  `json:"address"`
	Identity string  `json:"identity"`
	Weight   uint32  `json:"weight"`
	Zone     string  `json:"zone"`
	InFlight int64   `json:"in_flight"`
	RTTms    float64 `json:"rtt_ms"`
	Sampled  bool    `json:"sampled"`
	Other    map[string]json.RawMessage
}

var knownEndpointFields = []string{"address", "identity", "weight", "zone", "in_flight", "rtt_ms", "sampled"}

// UnmarshalJSON keeps the fields it does not know in Other.
func (e *Endpoint) UnmarshalJSON(data []byte) error {
	type plain Endpoint
	if err := json.Unmarshal(data, (*plain)(e)); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(data, &all); err != nil {
		return err
	}
	for _, k := range knownEndpointFields {
		delete(all, k)
	}
	if len(all) > 0 {
		e.Other = all
	}
	return nil
}

// MarshalJSON writes the known fields and Other together, as the proxy wrote them.
func (e Endpoint) MarshalJSON() ([]byte, error) {
	type plain Endpoint
	known, err := json.Marshal(plain(e))
	if err != nil || len(e.Other) == 0 {
		return known, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(known, &all); err != nil {
		return nil, err
	}
	delete(all, "Other")
	for k, v := range e.Other {
		all[k] = v
	}
	return json.Marshal(all)
}

// Endpoints reads /debug/endpoints; with all, the services whose endpoints the proxy does not
// follow too.
func (c *Client) Endpoints(ctx context.Context, all bool) (Endpoints, error) {
	path := "/debug/endpoints"
	if all {
		path += "?all"
	}
	var doc Endpoints
	_, err := c.get(ctx, path, &doc)
	return doc, err
}

// TapQuery selects what Tap streams.
type TapQuery struct {
	Service  string
	Limit    int
	Duration time.Duration
}

// Tap streams /debug/tap, calling each for every line until the stream ends, ctx ends, or each
// returns an error (returned as is).
func (c *Client) Tap(ctx context.Context, q TapQuery, each func(tap.Line) error) error {
	v := make([]string, 0, 3)
	if q.Service != "" {
		v = append(v, "service="+url.QueryEscape(q.Service))
	}
	if q.Limit > 0 {
		v = append(v, "limit="+strconv.Itoa(q.Limit))
	}
	if q.Duration > 0 {
		v = append(v, "duration="+q.Duration.String())
	}
	path := "/debug/tap"
	if len(v) > 0 {
		path += "?" + strings.Join(v, "&")
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+c.addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &Error{c.label, "/debug/tap", c.addr, err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		if resp.StatusCode == http.StatusNotFound {
			return &Error{c.label, "/debug/tap", c.addr, errors.New("this proxy has no tap (a Detour older than detour debug tap)")}
		}
		return &Error{c.label, "/debug/tap", c.addr, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l tap.Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return &Error{c.label, "/debug/tap", c.addr, fmt.Errorf("a line that is not JSON: %w", err)}
		}
		if err := each(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return &Error{c.label, "/debug/tap", c.addr, err}
	}
	return nil
}
