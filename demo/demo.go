// Package demo runs Detour on a node made of network namespaces, with no cluster: the first
// thing a new user runs (`make demo`). Everything it builds lives in namespaces named
// "dt-demo-…" and is removed when it ends, or by the next run if it crashed.
package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/proxy/origdst"
)

// Prefix starts the name of every namespace the demo makes.
const Prefix = "dt-demo-"

// Options configure a run.
type Options struct {
	Detour string // the detour binary run inside the pods; default: this executable
	Out    io.Writer
}

// Run builds a node with two pods, installs the redirect in one and shows a plain HTTP client
// (curl) in it being captured on the outbound port with its original destination, while the
// proxy's own UID goes straight through. It removes everything it made before returning.
func Run(ctx context.Context, o Options) (err error) {
	if o.Detour == "" {
		if o.Detour, err = os.Executable(); err != nil {
			return err
		}
	}
	s := &steps{out: o.Out, total: 5}
	var topo *netns.Topology
	defer func() {
		if topo == nil {
			return
		}
		s.do("removing every namespace, rule and process of the demo", func() (string, error) {
			return "", topo.Close()
		})
	}()
	if err := s.do("sweeping what an earlier run left", func() (string, error) {
		gone, err := netns.Sweep(Prefix)
		if len(gone) == 0 {
			return "nothing left over", err
		}
		return "removed " + strings.Join(gone, ", "), err
	}); err != nil {
		return err
	}
	var app, web *netns.Pod
	if err := s.do("building the node: bridge dt0 and pods app and web", func() (string, error) {
		var err error
		if topo, err = netns.NewTopology(Prefix); err != nil {
			return "", err
		}
		if app, err = topo.AddPod("app"); err != nil {
			return "", err
		}
		web, err = topo.AddPod("web")
		return fmt.Sprintf("app %s %s, web %s %s", app.IPv4, app.IPv6, web.IPv4, web.IPv6), err
	}); err != nil {
		return err
	}
	if err := s.do("detour init in app", func() (string, error) {
		var out strings.Builder
		cmd := exec.CommandContext(ctx, o.Detour, "init")
		cmd.Stdout, cmd.Stderr = &out, &out
		err := app.NS.Run(cmd)
		return indent(out.String()), err
	}); err != nil {
		return err
	}

	// Stand-ins for the proxy (in app) and for web's server, each answering with who it is.
	captured := make(chan string, 4)
	stop, err := serve(app.NS, netip.AddrPortFrom(netip.IPv4Unspecified(), 7140), func(c *net.TCPConn) string {
		dst, err := origdst.Lookup(c)
		if err != nil {
			return "origdst: " + err.Error()
		}
		captured <- fmt.Sprintf("connection from %s captured on app's outbound port 7140, original destination %s", c.RemoteAddr(), dst)
		return "captured by Detour's outbound port; you were going to " + dst.String()
	})
	if err != nil {
		return err
	}
	defer stop()
	stopWeb, err := serve(web.NS, netip.AddrPortFrom(web.IPv4, 8080), func(c *net.TCPConn) string {
		return "hello from web, you are " + c.RemoteAddr().String()
	})
	if err != nil {
		return err
	}
	defer stopWeb()

	url := fmt.Sprintf("http://%s/", netip.AddrPortFrom(web.IPv4, 8080))
	if err := s.do("curl "+url+" in app, as the app's user (root)", func() (string, error) {
		body, err := curl(ctx, app.NS, url, -1)
		if err != nil {
			return "", err
		}
		select {
		case line := <-captured:
			return fmt.Sprintf("curl got: %q\n        %s", body, line), nil
		case <-time.After(2 * time.Second):
			return "", fmt.Errorf("curl got %q but nothing was captured: the redirect does not work", body)
		}
	}); err != nil {
		return err
	}
	return s.do("curl "+url+" in app, as the proxy's UID 2102", func() (string, error) {
		body, err := curl(ctx, app.NS, url, 2102)
		if err != nil {
			return "", err
		}
		if !strings.HasPrefix(body, "hello from web") {
			return "", fmt.Errorf("the proxy UID was redirected: curl got %q", body)
		}
		return fmt.Sprintf("curl got: %q: the proxy's own traffic is not redirected", body), nil
	})
}

// serve answers HTTP on addr inside ns with the text answer returns for each connection.
func serve(ns *netns.NS, addr netip.AddrPort, answer func(*net.TCPConn) string) (stop func(), err error) {
	var ln net.Listener
	if err := ns.Do(func() error {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		return nil, fmt.Errorf("listening on %s in %s: %w", addr, ns.Name, err)
	}
	type connKey struct{}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, answer(r.Context().Value(connKey{}).(*net.TCPConn)))
		}),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	return func() { srv.Close() }, nil
}

// curl runs curl inside ns, as uid when uid >= 0, and returns what it printed.
func curl(ctx context.Context, ns *netns.NS, url string, uid int) (string, error) {
	var out, errb strings.Builder
	cmd := exec.CommandContext(ctx, "curl", "-sS", "-m", "3", url)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if uid >= 0 {
		netns.AsUID(cmd, uint32(uid), uint32(uid))
	}
	if err := ns.Run(cmd); err != nil {
		return "", fmt.Errorf("curl %s: %w: %s", url, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// steps prints numbered progress with the time each step took.
type steps struct {
	out   io.Writer
	n     int
	total int
}

func (s *steps) do(what string, fn func() (string, error)) error {
	s.n++
	label := fmt.Sprintf("[%d/%d]", s.n, s.total)
	if s.n > s.total {
		label = "[end]"
	}
	fmt.Fprintf(s.out, "%s %s ... ", label, what)
	start := time.Now()
	detail, err := fn()
	took := time.Since(start).Round(100 * time.Microsecond)
	if err != nil {
		fmt.Fprintf(s.out, "FAILED after %s\n", took)
		return fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(s.out, "%s\n", took)
	if detail = strings.TrimRight(detail, "\n"); detail != "" {
		fmt.Fprintf(s.out, "        %s\n", detail)
	}
	return nil
}

func indent(s string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n        ")
}
