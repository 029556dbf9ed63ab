package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/detourmesh/detour/netns"
)

// ControlSocket is where a running demo takes detour demo scale and fault: a unix socket only
// root (who runs the demo) may use.
const ControlSocket = "/run/detour-demo.sock"

// maxReplicas bounds detour demo scale: each replica is a namespace and two processes.
const maxReplicas = 20

// controlServer serves the control socket.
type controlServer struct {
	srv *http.Server
	ln  net.Listener
}

func (c *controlServer) close() {
	c.srv.Close()
	os.Remove(c.ln.Addr().String())
}

// serveControl listens on the control socket for scale and fault requests while the demo runs.
func (d *demo) serveControl(ctx context.Context) (*controlServer, error) {
	path := d.o.Control
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	os.Remove(path) // an earlier run's; one demo runs at a time (its namespaces' names are fixed)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	answer := func(w http.ResponseWriter, msg string, err error) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		io.WriteString(w, msg+"\n")
	}
	mux.HandleFunc("POST /scale", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.FormValue("stockdata"))
		if err != nil || n < 1 || n > maxReplicas {
			answer(w, "", fmt.Errorf("stockdata=%q: want 1 to %d replicas", r.FormValue("stockdata"), maxReplicas))
			return
		}
		msg, err := d.scale(ctx, n)
		answer(w, msg, err)
	})
	mux.HandleFunc("POST /fault", func(w http.ResponseWriter, r *http.Request) {
		fail, err := strconv.ParseFloat(r.FormValue("fail"), 64)
		if err != nil || fail < 0 || fail > 1 {
			answer(w, "", fmt.Errorf("--fail %q: want a fraction from 0 to 1", r.FormValue("fail")))
			return
		}
		msg, err := d.fault(ctx, r.FormValue("pod"), fail)
		answer(w, msg, err)
	})
	c := &controlServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}
	go c.srv.Serve(ln)
	return c, nil
}

// scale adds or removes StockData replicas until there are n, each added one meshed as the
// first ones were, and updates the discovery file and the VIP's backends.
func (d *demo) scale(ctx context.Context, n int) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var added, removed []string
	for len(d.stock) < n {
		p, err := d.addReplica(ctx)
		if err != nil {
			return "", err
		}
		added = append(added, fmt.Sprintf("%s %s", p.Name, p.IPv4))
	}
	var gone []*netns.Pod
	if len(d.stock) > n {
		gone = d.stock[n:]
		d.stock = d.stock[:n:n]
		if err := d.publish(); err != nil {
			return "", err
		}
		// The StockWeb proxy stops picking them before they stop.
		for _, p := range gone {
			if err := d.waitEndpoint(ctx, netip.AddrPortFrom(p.IPv4, stockPort), false); err != nil {
				return "", err
			}
		}
	}
	for _, p := range gone {
		for _, proc := range []*process{d.proxyProcs[p], d.stockProcs[p]} {
			if proc != nil {
				d.procs.stop(proc)
			}
		}
		delete(d.proxyProcs, p)
		delete(d.stockProcs, p)
		delete(d.tokens, p)
		if err := d.topo.RemovePod(p); err != nil {
			return "", err
		}
		removed = append(removed, p.Name)
	}
	msg := fmt.Sprintf("stockdata: %d replicas", len(d.stock))
	if len(added) > 0 {
		msg += "; added " + strings.Join(added, ", ")
	}
	if len(removed) > 0 {
		msg += "; removed " + strings.Join(removed, ", ")
	}
	return msg, nil
}

// addReplica makes one more StockData pod, meshed, and publishes it. Called with d.mu held.
func (d *demo) addReplica(ctx context.Context) (*netns.Pod, error) {
	p, err := d.topo.AddPod(fmt.Sprintf("stockdata-%d", d.nextStock))
	if err != nil {
		return nil, err
	}
	d.nextStock++
	// Every replica runs as the stockdata service account; its bootstrap token proves that
	// identity, so the new pod's proxy uses the first replica's (as pods of one Deployment
	// share their ServiceAccount).
	d.tokens[p] = d.tokens[d.stock[0]]
	if err := d.startStock(ctx, p, 0); err != nil {
		return nil, err
	}
	if err := d.waitTCP(ctx, []*netns.Pod{p}, stockPort); err != nil {
		return nil, err
	}
	if _, err := d.procs.run(ctx, p, filepath.Join(d.o.Bin, "detour"), "init", "-o", "json",
		"--pod-name", p.Name, "--pod-namespace", podNamespace); err != nil {
		return nil, fmt.Errorf("init in %s: %w", p.Name, err)
	}
	if err := d.startProxy(ctx, p); err != nil {
		return nil, err
	}
	if err := d.waitReady(ctx, p); err != nil {
		return nil, err
	}
	d.stock = append(d.stock, p)
	if err := d.publish(); err != nil {
		return nil, err
	}
	return p, d.waitEndpoint(ctx, netip.AddrPortFrom(p.IPv4, stockPort), true)
}

// publish writes the discovery file (the controller follows it) and the VIPs' backends for the
// replicas in d.stock. Called with d.mu held.
func (d *demo) publish() error {
	if _, err := d.discoveryFile(); err != nil {
		return err
	}
	var b4, b6 []netip.AddrPort
	for _, p := range d.stock {
		b4 = append(b4, netip.AddrPortFrom(p.IPv4, stockPort))
		b6 = append(b6, netip.AddrPortFrom(p.IPv6, stockPort))
	}
	return errors.Join(d.topo.SetServiceBackends(vip4, b4), d.topo.SetServiceBackends(vip6, b6))
}

// waitEndpoint waits until StockWeb's proxy lists addr among its endpoints (known) or no
// longer does.
func (d *demo) waitEndpoint(ctx context.Context, addr netip.AddrPort, known bool) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: d.web.NS.DialContext, DisableKeepAlives: true}}
	url := fmt.Sprintf("http://%s/debug/endpoints", netip.AddrPortFrom(loopback, adminPort))
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"`+addr.String()+`"`) == known {
				return nil
			}
		}
		if time.Now().After(deadline) {
			if known {
				return fmt.Errorf("StockWeb's proxy does not list %s 10s after it joined discovery", addr)
			}
			return fmt.Errorf("StockWeb's proxy still lists %s 10s after it left discovery", addr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// fault restarts the StockData of pod answering fail of its calls UNAVAILABLE (0: none).
func (d *demo) fault(ctx context.Context, pod string, fail float64) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var p *netns.Pod
	var names []string
	for _, s := range d.stock {
		names = append(names, s.Name)
		if s.Name == pod {
			p = s
		}
	}
	if p == nil {
		return "", fmt.Errorf("no StockData replica %q: the replicas are %s", pod, strings.Join(names, ", "))
	}
	if proc := d.stockProcs[p]; proc != nil {
		if err := d.procs.stop(proc); err != nil {
			return "", err
		}
	}
	if err := d.startStock(ctx, p, fail); err != nil {
		return "", err
	}
	if err := d.waitTCP(ctx, []*netns.Pod{p}, stockPort); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s fails %s of its calls (UNAVAILABLE)", pod, strconv.FormatFloat(fail*100, 'f', -1, 64)+"%"), nil
}

// Control sends a running demo's control socket one request (Scale, Fault) and returns its
// answer.
func Control(ctx context.Context, socket, path string, form map[string]string) (string, error) {
	if socket == "" {
		socket = ControlSocket
	}
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	vals := url.Values{}
	for k, v := range form {
		vals.Set(k, v)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://demo"+path+"?"+vals.Encode(), nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("no demo answers at %s (start one with detour demo, as root): %w", socket, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(strings.TrimSpace(string(body)))
	}
	return strings.TrimSpace(string(body)), nil
}
