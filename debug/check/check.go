// Package check is `detour debug check`: one checklist of everything a pod's traffic through
// Detour depends on, each line ok, failed or skipped, with a hint for every failure. It reads
// the node's /proc, the pod's rules and its proxy's admin port from inside the pod's network
// namespace, and proves the redirect with real connections against the live proxy without
// disturbing it (init/verify.ProveLive).
package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/detourmesh/detour/debug/pods"
	"github.com/detourmesh/detour/debug/proxyapi"
	"github.com/detourmesh/detour/debug/ruleset"
	"github.com/detourmesh/detour/init/plan"
	"github.com/detourmesh/detour/init/verify"
	"github.com/detourmesh/detour/spiffe"
)

// Statuses of a line.
const (
	OK      = "ok"
	Failed  = "failed"
	Skipped = "skipped"
)

// Line is one item of the checklist.
type Line struct {
	Check  string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

// Report is the checklist of one pod.
type Report struct {
	Pod   string `json:"pod"`
	Lines []Line `json:"checks"`
}

// Failed reports whether any line failed.
func (r Report) Failed() bool {
	for _, l := range r.Lines {
		if l.Status == Failed {
			return true
		}
	}
	return false
}

// Options configure Run.
type Options struct {
	Target *pods.Target
	Proc   string // default /proc
	// Step, if set, is told before each group of checks starts, and returns the function to
	// call when it ends: the caller's progress display.
	Step func(what string) (done func())
	Now  func() time.Time // default time.Now
}

// renewGrace is how long past its renewal time a certificate may be before the checklist calls
// the renewal overdue: the proxy renews at the renewal time and retries within seconds.
const renewGrace = 10 * time.Second

type checker struct {
	o      Options
	rep    Report
	pod    pods.Pod
	hasPod bool
	api    *proxyapi.Client
	apiUp  bool
	proxy  proxyapi.Proxy
	hasDoc bool
	rules  ruleset.Report
	now    time.Time
}

func (c *checker) add(check, status, detail, hint string) {
	c.rep.Lines = append(c.rep.Lines, Line{Check: check, Status: status, Detail: detail, Hint: hint})
}

func (c *checker) step(what string) func() {
	if c.o.Step == nil {
		return func() {}
	}
	return c.o.Step(what)
}

// Run checks the target and returns its checklist.
func Run(ctx context.Context, o Options) Report {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Proc == "" {
		o.Proc = "/proc"
	}
	c := &checker{o: o, rep: Report{Pod: o.Target.Label()}, now: o.Now()}
	c.pod, c.hasPod = o.Target.Proxy()

	done := c.step("looking at the proxy process")
	c.process()
	done()
	if c.hasPod {
		c.api = proxyapi.New(o.Target.NS, c.pod.Flags.AdminPort, o.Target.Label())
		done = c.step("reading the proxy's admin port")
		c.admin(ctx)
		c.listeners()
		done()
	}
	done = c.step("reading the rules of both iptables backends")
	c.checkRules()
	done()
	done = c.step("proving the redirect against the live proxy")
	c.redirect(ctx)
	done()
	done = c.step("checking discovery, the controller and the certificate")
	c.identityAndDiscovery(ctx)
	done()
	return c.rep
}

func (c *checker) process() {
	t := c.o.Target
	switch len(t.Proxies) {
	case 0:
		c.add("proxy", Failed, fmt.Sprintf("no detour proxy runs in network namespace %s", t.NetNS),
			"the proxy exited or was killed: read its log (kubectl logs POD -c detour-proxy; the demo keeps its logs in a folder it names). "+
				"While the rules are in place every TCP connection of the pod is redirected to ports nobody listens on")
		return
	case 1:
	default:
		pids := make([]string, len(t.Proxies))
		for i, p := range t.Proxies {
			pids[i] = fmt.Sprint(p.PID)
		}
		c.add("proxy", Failed, fmt.Sprintf("%d detour proxies run in network namespace %s (PIDs %s)", len(t.Proxies), t.NetNS, strings.Join(pids, ", ")),
			"one proxy per pod: the others cannot hold the ports; stop the extra ones")
		return
	}
	p := c.pod
	state := procState(c.o.Proc, p.PID)
	if state == "" || state == "Z" || state == "X" {
		c.add("proxy", Failed, fmt.Sprintf("the proxy PID %d has exited", p.PID), "read its log; a restarted proxy is found again by detour debug pods")
		c.hasPod = false
		return
	}
	up := c.now.Sub(p.Started).Round(time.Second)
	c.add("proxy", OK, fmt.Sprintf("PID %d, up %s, as UID %d (%s)", p.PID, up, p.UID, p.Exe), "")
}

// procState is the state letter of /proc/PID/stat ("" if the process is gone).
func procState(proc string, pid int) string {
	data, err := os.ReadFile(filepath.Join(proc, fmt.Sprint(pid), "stat"))
	if err != nil {
		return ""
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return strings.Fields(s[i+1:])[0]
}

func (c *checker) admin(ctx context.Context) {
	if err := c.api.Live(ctx); err != nil {
		hint := "the proxy is still starting, or hung; its log says which"
		if proxyapi.Refused(err) {
			hint = fmt.Sprintf("nothing listens on %s in the pod's namespace: the proxy is starting, or was given another --admin-port", c.api.Addr())
		}
		c.add("admin-port", Failed, err.Error(), hint)
		return
	}
	c.apiUp = true
	c.add("admin-port", OK, fmt.Sprintf("answers on %s inside the pod's network namespace", c.api.Addr()), "")
	if doc, ok, err := c.api.Proxy(ctx); err == nil && ok {
		c.proxy, c.hasDoc = doc, true
	}
	ready, reason, err := c.api.Ready(ctx)
	switch {
	case err != nil:
		c.add("ready", Failed, err.Error(), "")
	case ready:
		c.add("ready", OK, "the proxy is ready (/ready)", "")
	default:
		hint := "the proxy has not finished starting"
		switch {
		case strings.Contains(reason, "certificate"):
			hint = "it has no valid workload certificate: see the certificate and controller lines below"
		case reason == "draining":
			hint = "it is shutting down (SIGTERM or POST /shutdown); a new one takes over when the pod restarts it"
		}
		c.add("ready", Failed, "not ready: "+reason, hint)
	}
}

// listeners checks the namespace's socket table for the proxy's listening ports.
func (c *checker) listeners() {
	lst, err := listening(c.o.Target, c.o.Proc, c.pod.PID)
	if err != nil {
		c.add("listeners", Failed, "reading the namespace's sockets: "+err.Error(), "")
		return
	}
	f := c.pod.Flags
	var have, missing, foreign []string
	for _, l := range []struct {
		role string
		port uint16
	}{{"outbound", f.OutboundPort}, {"inbound", f.InboundPort}, {"admin", f.AdminPort}} {
		socks := lst[l.port]
		if len(socks) == 0 {
			missing = append(missing, fmt.Sprintf("%s %d", l.role, l.port))
			continue
		}
		var addrs []string
		for _, s := range socks {
			if !s.proxy {
				foreign = append(foreign, fmt.Sprintf("%s port %s is held by another process", l.role, s.addr))
			}
			addrs = append(addrs, s.addr.String())
		}
		have = append(have, fmt.Sprintf("%s %s", l.role, strings.Join(addrs, " ")))
	}
	switch {
	case len(missing) > 0:
		c.add("listeners", Failed, "nothing listens on the proxy's "+strings.Join(missing, ", "),
			"the proxy has not bound its ports yet, or failed to (its log says why, e.g. address in use)")
	case len(foreign) > 0:
		c.add("listeners", Failed, strings.Join(foreign, "; "), "another process in the pod holds a port the proxy needs: give one of them other ports")
	default:
		c.add("listeners", OK, strings.Join(have, "; "), "")
	}
}

func (c *checker) fallback() plan.Config {
	cfg := plan.DefaultConfig()
	if c.hasPod {
		cfg.InboundPort, cfg.OutboundPort, cfg.AdminPort = c.pod.Flags.InboundPort, c.pod.Flags.OutboundPort, c.pod.Flags.AdminPort
	}
	return cfg
}

func (c *checker) checkRules() {
	snap, err := ruleset.Read(c.o.Target.NS)
	if err != nil {
		c.add("rules", Failed, "reading the rules: "+err.Error(), "detour debug needs iptables-legacy-save and iptables-nft-save (Debian: apt-get install iptables)")
		return
	}
	var proxy *ruleset.Ports
	if c.hasPod {
		f := c.pod.Flags
		proxy = &ruleset.Ports{Inbound: f.InboundPort, Outbound: f.OutboundPort, Admin: f.AdminPort}
	}
	c.rules = ruleset.Analyze(snap, c.fallback(), proxy)
	if c.hasPod && c.rules.Backend != "" {
		if uid := c.rules.Config.ProxyUID; c.pod.UID != int(uid) {
			c.add("proxy-uid", Failed, fmt.Sprintf("the proxy runs as UID %d, but the rules exempt UID %d from the redirect: the proxy's own connections are sent back into it", c.pod.UID, uid),
				fmt.Sprintf("run the proxy as UID %d (runAsUser), or init with --proxy-uid %d", uid, c.pod.UID))
		} else {
			c.add("proxy-uid", OK, fmt.Sprintf("the proxy runs as UID %d, the UID the rules exempt", uid), "")
		}
	}
	byGroup := map[string][]ruleset.Finding{}
	for _, f := range c.rules.Findings {
		if f.Note {
			continue
		}
		byGroup[group(f.Kind)] = append(byGroup[group(f.Kind)], f)
	}
	for _, g := range []struct{ name, ok string }{
		{"rules-backend", fmt.Sprintf("iptables-%s only; iptables-%s holds nothing that changes TCP's path", c.rules.Backend, otherBackend(c.rules.Backend))},
		{"rules-plan", fmt.Sprintf("%s as planned for init's flags: %s (%s)", strings.Join(c.rules.Families, ", "), c.rules.Flags, c.rules.FlagsSource)},
		{"rules-foreign", "no rule ahead of Detour's jumps captures or bypasses TCP"},
	} {
		fs := byGroup[g.name]
		if len(fs) == 0 {
			if c.rules.Backend == "" && g.name != "rules-backend" {
				c.add(g.name, Skipped, "no Detour rules to compare", "")
				continue
			}
			c.add(g.name, OK, g.ok, "")
			continue
		}
		for _, f := range fs {
			detail := f.Detail
			if f.Family != "" {
				detail = f.Family + ": " + detail
			}
			if f.Rule != "" && !strings.Contains(detail, f.Rule) {
				detail += " [" + f.Rule + "]"
			}
			c.add(g.name, Failed, detail, f.Hint)
		}
	}
}

func otherBackend(b string) string {
	if b == "legacy" {
		return "nft"
	}
	return "legacy"
}

func group(kind string) string {
	switch kind {
	case ruleset.NoRules, ruleset.BothBackends, ruleset.OtherBackend:
		return "rules-backend"
	case ruleset.ForeignAhead:
		return "rules-foreign"
	}
	return "rules-plan"
}

// observer finds the proof's connections in the proxy's /debug/connections.
type observer struct {
	ctx context.Context
	api *proxyapi.Client
}

// landedWithin bounds the wait for the proxy to record a connection: it accepts at once, and a
// connection it never saw is looked for this long.
const landedWithin = 2 * time.Second

func (o observer) Landed(client netip.AddrPort, since time.Time) (verify.Landing, bool, error) {
	deadline := time.Now().Add(landedWithin)
	want := client.String()
	for {
		conns, err := o.api.Connections(o.ctx, true)
		if err != nil {
			return verify.Landing{}, false, err
		}
		// The newest connection from that address accepted since the dial: the client port may
		// have served an earlier probe that the proxy remembers.
		var hit *proxyapi.Conn
		for i, cn := range conns {
			if cn.Client == want && !cn.Since.Before(since) && (hit == nil || cn.ID > hit.ID) {
				hit = &conns[i]
			}
		}
		if hit != nil {
			orig, err := netip.ParseAddrPort(hit.Dst)
			if err != nil {
				return verify.Landing{}, false, fmt.Errorf("the proxy recorded original destination %q: %w", hit.Dst, err)
			}
			return verify.Landing{Listener: hit.Direction, Orig: orig}, true, nil
		}
		if time.Now().After(deadline) {
			return verify.Landing{}, false, nil
		}
		select {
		case <-o.ctx.Done():
			return verify.Landing{}, false, o.ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *checker) redirect(ctx context.Context) {
	switch {
	case !c.hasPod:
		c.add("redirect", Skipped, "no running proxy to prove the redirect against", "")
		return
	case !c.apiUp:
		c.add("redirect", Skipped, "the proxy's admin port does not answer: the proof asks it where its connections landed", "")
		return
	case c.rules.Backend == "":
		c.add("redirect", Skipped, "no Detour rules to prove", "")
		return
	case c.pod.UID != int(c.rules.Config.ProxyUID):
		// The proof's outbound connection would be relayed by the proxy, redirected back into
		// it, relayed again...: a loop the check must not start.
		c.add("redirect", Skipped, "the proxy's own connections are not exempt (see proxy-uid): proving the redirect would start a loop", "")
		return
	}
	var fams []plan.Family
	for _, f := range c.rules.Families {
		if f == "IPv6" {
			fams = append(fams, plan.IPv6)
		} else {
			fams = append(fams, plan.IPv4)
		}
	}
	// Prove also the ports foreign rules name, so the proof shows what they do.
	var ports []uint16
	for _, f := range c.rules.Findings {
		for _, p := range f.Ports {
			if !slices.Contains(ports, p) && len(ports) < 4 {
				ports = append(ports, p)
			}
		}
	}
	cfg := c.rules.Config
	var r verify.Report
	err := c.o.Target.NS.Do(func() error {
		r = verify.ProveLive(cfg, fams, observer{ctx, c.api}, ports)
		return nil
	})
	if err != nil {
		c.add("redirect", Failed, "entering the pod's network namespace: "+err.Error(), "")
		return
	}
	for _, s := range r.Steps {
		hint := ""
		if s.Status == Failed {
			hint = proofHint(s.Name)
		}
		name := proofNames[s.Name]
		if name == "" { // an outbound proof of an extra port: outbound-port-80
			name = "redirect-out:" + strings.TrimPrefix(s.Name, "outbound-port-")
		}
		c.add(name, s.Status, s.Family+": "+s.Detail, hint)
	}
}

// proofNames are the checklist's names of the proof's steps.
var proofNames = map[string]string{
	"addresses":              "redirect",
	"outbound":               "redirect-out",
	"own-address-to-inbound": "redirect-in",
	"proxy-uid-exempt":       "uid-exempt",
	"admin-port-exempt":      "admin-exempt",
}

func proofHint(step string) string {
	switch {
	case strings.HasPrefix(step, "outbound"):
		return "the app's connections are not sent to the proxy: see the rules lines above (a missing jump, a foreign rule, the other backend)"
	case step == "own-address-to-inbound":
		return "connections to the pod are not sent to its inbound proxy: see the rules lines above"
	case step == "proxy-uid-exempt":
		return "the proxy's own connections are redirected back into it: init's --proxy-uid must be the UID the proxy runs as"
	case step == "admin-port-exempt":
		return "the admin port is redirected: init's --admin-port must be the proxy's"
	}
	return ""
}

func (c *checker) identityAndDiscovery(ctx context.Context) {
	if !c.hasPod || !c.apiUp {
		for _, n := range []string{"discovery", "controller", "trust-anchor", "certificate"} {
			c.add(n, Skipped, "no proxy answering to ask", "")
		}
		return
	}
	f := c.pod.Flags
	controller, _ := strings.CutPrefix(f.Discovery, "controller:")
	if !strings.HasPrefix(f.Discovery, "controller:") {
		controller = ""
	}
	c.discovery(controller)

	var anchors []*x509.Certificate
	var anchorErr error
	if f.TrustAnchor != "" {
		anchors, anchorErr = spiffe.LoadTrustAnchors(c.inProxyRoot(f.TrustAnchor))
	}
	var controllerCert []*x509.Certificate
	switch {
	case controller == "":
		c.add("controller", Skipped, "the proxy does not use a controller (--discovery "+orNone(f.Discovery)+")", "")
		c.add("trust-anchor", Skipped, "no controller to compare with", "")
	case anchorErr != nil:
		c.add("controller", Skipped, "cannot verify the controller without the proxy's trust anchor", "")
		c.add("trust-anchor", Failed, fmt.Sprintf("reading the proxy's --trust-anchor %s: %v", f.TrustAnchor, anchorErr),
			"the trust anchor file is read from the proxy's own file system (through /proc/PID/root)")
	default:
		var err error
		controllerCert, err = c.dialController(ctx, controller)
		switch {
		case err == nil:
			msg := fmt.Sprintf("%s answers TLS from the pod's network namespace", controller)
			if c.hasDoc && c.proxy.Discovery.Connected != nil && !*c.proxy.Discovery.Connected {
				c.add("controller", Failed, msg+", but the proxy's discovery stream to it is down: "+c.proxy.Discovery.Error,
					"the controller refuses the proxy: check that the proxy's --identity-token holds a token of the controller's --tokens for its identity")
			} else {
				c.add("controller", OK, msg, "")
			}
		default:
			c.add("controller", Failed, fmt.Sprintf("the controller at %s is unreachable from the pod's network namespace: %v", controller, err),
				"start the controller, or give the pod a route to it; meanwhile the proxy routes by its last discovery snapshot and keeps its certificate until it expires")
		}
		c.trustAnchor(anchors, controllerCert, err)
	}
	c.certificate(ctx)
}

// shortDuration writes d in its two largest units: 23h59m, 4m12s, 9s.
func shortDuration(d time.Duration) string {
	switch d = d.Round(time.Second); {
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return d.String()
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func orNone(s string) string {
	if s == "" {
		return "unset"
	}
	return s
}

func trustDomain(anchors []*x509.Certificate) spiffeid.TrustDomain {
	td, _ := spiffe.TrustDomainOf(anchors[0]) // the zero trust domain fails the verification below
	return td
}

// inProxyRoot is path as the proxy sees it, read from the node: through the proxy's root
// (its mount namespace), and its working directory for a relative path.
func (c *checker) inProxyRoot(path string) string {
	base := filepath.Join(c.o.Proc, fmt.Sprint(c.pod.PID))
	if filepath.IsAbs(path) {
		return filepath.Join(base, "root", path)
	}
	return filepath.Join(base, "cwd", path)
}

func (c *checker) discovery(controller string) {
	if !c.hasDoc {
		eps, err := c.api.Endpoints(context.Background(), false)
		if err != nil {
			c.add("discovery", Failed, err.Error(), "")
			return
		}
		c.add("discovery", OK, fmt.Sprintf("revision %q, %s (a proxy without /debug/proxy: whether its controller stream is up is unknown)", eps.Revision, plural(len(eps.Services), "service")), "")
		return
	}
	d := c.proxy.Discovery
	loaded := fmt.Sprintf("revision %q, %s", d.Revision, plural(d.Services, "service"))
	if d.Resolved < d.Services {
		loaded += fmt.Sprintf(" (%d in use, their endpoints followed)", d.Resolved)
	}
	if d.Updated != nil {
		loaded += fmt.Sprintf(", installed %s ago", c.now.Sub(*d.Updated).Round(time.Second))
	}
	switch {
	case d.Source == "none":
		c.add("discovery", OK, "no discovery source: every connection is relayed to its original destination", "")
	case d.Revision == "":
		c.add("discovery", Failed, fmt.Sprintf("no snapshot from %s yet", d.Source), "the proxy routes nothing until discovery loads: see the controller line")
	case d.Connected != nil && !*d.Connected:
		c.add("discovery", OK, fmt.Sprintf("from %s: the stream is down (%s), and the proxy keeps routing by its last snapshot, %s", d.Source, d.Error, loaded), "")
	default:
		c.add("discovery", OK, fmt.Sprintf("from %s: %s", d.Source, loaded), "")
	}
}

// dialController makes a TLS handshake with the controller from inside the pod's namespace
// and returns the chain it presented, unverified: trustAnchor judges it.
func (c *checker) dialController(ctx context.Context, addr string) ([]*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	raw, err := c.o.Target.NS.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	var chain []*x509.Certificate
	conn := tls.Client(raw, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"}, // a gRPC server refuses a client that offers no ALPN
		InsecureSkipVerify: true,           // judged below, against the pod's own trust anchor
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain = cs.PeerCertificates
			return nil
		},
	})
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	conn.Close()
	return chain, nil
}

func (c *checker) trustAnchor(anchors []*x509.Certificate, chain []*x509.Certificate, dialErr error) {
	if dialErr != nil {
		c.add("trust-anchor", Skipped, "the controller is unreachable: nothing to compare the pod's trust anchor with", "")
		return
	}
	fp := spiffe.Fingerprint(anchors[0].Raw)
	td := trustDomain(anchors)
	id, err := spiffe.VerifyPeer(chain, spiffe.Pool(anchors), x509.ExtKeyUsageServerAuth, td, c.now)
	if err == nil && id != spiffe.ControllerID(td) {
		err = fmt.Errorf("it presents %s, not %s", id, spiffe.ControllerID(td))
	}
	if err != nil {
		c.add("trust-anchor", Failed, fmt.Sprintf("the pod's trust anchor (sha256 %s…) does not verify the controller's certificate: %v", fp[:16], err),
			"the proxy was given another CA's ca.crt than the controller's: give it the controller's (--trust-anchor)")
		return
	}
	if id, ok, err := c.api.Identity(context.Background()); err == nil && ok && len(id.TrustAnchors) > 0 && !slices.Contains(id.TrustAnchors, fp) {
		c.add("trust-anchor", Failed, fmt.Sprintf("the controller's certificate chains to the pod's trust anchor (sha256 %s…), but the anchors it returned with the workload certificate do not include it", fp[:16]),
			"the trust domain's CA was replaced: restart the proxy with the new ca.crt")
		return
	}
	c.add("trust-anchor", OK, fmt.Sprintf("the pod's trust anchor (sha256 %s…) verifies the controller's certificate", fp[:12]), "")
}

func (c *checker) certificate(ctx context.Context) {
	id, ok, err := c.api.Identity(ctx)
	switch {
	case err != nil:
		c.add("certificate", Failed, err.Error(), "")
		return
	case !ok:
		c.add("certificate", Skipped, "the proxy has no workload identity (--identity unset): it speaks no mutual TLS", "")
		return
	case id.NotAfter.IsZero():
		hint := "the proxy has not obtained a certificate from the controller"
		if id.LastError != "" {
			hint += ": " + id.LastError
		}
		c.add("certificate", Failed, "no certificate for "+id.ID, hint)
		return
	}
	life := id.NotAfter.Sub(id.NotBefore)
	left := id.NotAfter.Sub(c.now)
	why := ""
	if id.LastError != "" {
		why = fmt.Sprintf("; the last renewal failed %s ago: %s", c.now.Sub(id.LastErrorAt).Round(time.Second), id.LastError)
	}
	switch {
	case left <= 0:
		c.add("certificate", Failed, fmt.Sprintf("%s: the certificate expired %s ago (at %s)%s", id.ID, (-left).Round(time.Second), id.NotAfter.Format(time.RFC3339), why),
			"the proxy could not renew it: the controller must be reachable and accept the proxy's identity token; meshed peers refuse the expired certificate")
	case c.now.After(id.RenewAt.Add(max(renewGrace, life/20))):
		c.add("certificate", Failed, fmt.Sprintf("%s: renewal overdue since %s, expires in %s%s", id.ID, id.RenewAt.Format(time.RFC3339), left.Round(time.Second), why),
			"renewal keeps failing: see the controller line; once the certificate expires meshed peers refuse the pod")
	default:
		c.add("certificate", OK, fmt.Sprintf("%s: valid %s more, renews in %s", id.ID, shortDuration(left), shortDuration(id.RenewAt.Sub(c.now))), "")
	}
}

// listening maps ports to the sockets listening on them in the target's namespace, marking those
// the proxy holds.
func listening(t *pods.Target, proc string, pid int) (map[uint16][]socket, error) {
	own, err := socketInodes(proc, pid)
	if err != nil {
		return nil, err
	}
	out := map[uint16][]socket{}
	err = t.NS.Do(func() error {
		for _, file := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			data, err := os.ReadFile(file)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			for _, s := range parseListeners(string(data)) {
				s.proxy = own[s.inode]
				out[s.addr.Port()] = append(out[s.addr.Port()], s)
			}
		}
		return nil
	})
	return out, err
}

// socketInodes lists the socket inodes a process holds.
func socketInodes(proc string, pid int) (map[uint64]bool, error) {
	dir := filepath.Join(proc, fmt.Sprint(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[uint64]bool{}
	for _, e := range entries {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var ino uint64
		if _, err := fmt.Sscanf(l, "socket:[%d]", &ino); err == nil {
			out[ino] = true
		}
	}
	return out, nil
}
