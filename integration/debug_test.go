package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detourmesh/detour/internal/syncbuf"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// debugOut is what one `detour debug` command did.
type debugOut struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// checkBound is how long `detour debug check` may take, faults included: the issue asks for an
// answer "in a few seconds".
const checkBound = 10 * time.Second

// debugCmd runs `detour debug args...` on the node (the root namespace), bounded in time.
func debugCmd(t *testing.T, bound time.Duration, args ...string) debugOut {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, detourBin, append([]string{"debug"}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := debugOut{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ctx.Err() != nil {
		t.Fatalf("detour debug %v did not finish within %s:\n%s\n%s", args, bound, r.stdout, r.stderr)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("detour debug %v: %v", args, err)
	}
	return r
}

// debugJSON runs `detour debug args... -o json`, which must exit with code, into v.
func debugJSON(t *testing.T, v any, code int, args ...string) debugOut {
	t.Helper()
	r := debugCmd(t, checkBound, append(args, "-o", "json")...)
	if r.code != code {
		t.Fatalf("detour debug %v exited %d, want %d:\n%s\n%s", args, r.code, code, r.stdout, r.stderr)
	}
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("detour debug %v -o json: %v\n%s", args, err, r.stdout)
	}
	return r
}

type checkLine struct{ Check, Status, Detail, Hint string }

type checkReport struct {
	Pod    string
	Checks []checkLine
}

func (r checkReport) String() string {
	var b strings.Builder
	fmt.Fprintln(&b, r.Pod)
	for _, l := range r.Checks {
		fmt.Fprintf(&b, "  %-14s %-8s %s\n", l.Check, l.Status, l.Detail)
		if l.Hint != "" {
			fmt.Fprintf(&b, "  %-14s %-8s hint: %s\n", "", "", l.Hint)
		}
	}
	return b.String()
}

// debugCheck runs `detour debug check pod` and returns its report and exit code.
func debugCheck(t *testing.T, pod string) (checkReport, int) {
	t.Helper()
	r := debugCmd(t, checkBound, "check", pod, "-o", "json")
	var rep checkReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("detour debug check %s -o json (exit %d): %v\n%s\n%s", pod, r.code, err, r.stdout, r.stderr)
	}
	t.Logf("detour debug check %s: exit %d in %s", pod, r.code, r.took.Round(time.Millisecond))
	return rep, r.code
}

// settleWithin bounds how long healthy and faulty wait for the report they expect: a fault
// (or its repair) is in place when they are called, but what the check observes through the
// kernel (a neighbour entry resolving, a proxy noticing its rules) may take a moment to follow.
const settleWithin = 10 * time.Second

// healthy waits until pod passes `detour debug check`.
func healthy(t *testing.T, pod string) checkReport {
	t.Helper()
	return settle(t, pod, func(rep checkReport, code int) []string {
		var bad []string
		for _, l := range rep.Checks {
			if l.Status == "failed" {
				bad = append(bad, fmt.Sprintf("check %s failed: %s", l.Check, l.Detail))
			}
		}
		if code != 0 && len(bad) == 0 {
			bad = append(bad, fmt.Sprintf("exit %d with no failed check", code))
		}
		return bad
	})
}

// faulty waits until `detour debug check pod` exits non-zero and, for each check named in want,
// a failed line of that check says the text given, with a hint.
func faulty(t *testing.T, pod string, want map[string]string) checkReport {
	t.Helper()
	return settle(t, pod, func(rep checkReport, code int) []string {
		var bad []string
		if code == 0 {
			bad = append(bad, "exit 0 with the fault in place")
		}
		for check, text := range want {
			if !slices.ContainsFunc(rep.Checks, func(l checkLine) bool {
				return l.Check == check && l.Status == "failed" && strings.Contains(l.Detail, text) && l.Hint != ""
			}) {
				bad = append(bad, fmt.Sprintf("no failed %s line with a hint saying %q", check, text))
			}
		}
		return bad
	})
}

// settle runs `detour debug check pod` until judge finds nothing wrong with its report, and
// fails the test with the last report and judgement after settleWithin.
func settle(t *testing.T, pod string, judge func(checkReport, int) []string) checkReport {
	t.Helper()
	deadline := time.Now().Add(settleWithin)
	for {
		rep, code := debugCheck(t, pod)
		bad := judge(rep, code)
		if len(bad) == 0 {
			return rep
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, detour debug check %s (exit %d):\n%s\n%s", settleWithin, pod, code, strings.Join(bad, "\n"), rep)
		}
		t.Logf("not yet (%s); checking again", strings.Join(bad, "; "))
		time.Sleep(250 * time.Millisecond)
	}
}

// debugDemo runs `detour demo` until the test ends, stopping it with SIGTERM (and, should that
// fail, by PID and by sweeping its namespaces).
type debugDemo struct {
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	port int
	addr map[string]string // pod name -> IPv4 address
}

func startDebugDemo(t *testing.T, port int, args ...string) *debugDemo {
	t.Helper()
	d := &debugDemo{out: &syncbuf.Buffer{}, port: port, addr: map[string]string{}}
	d.cmd = exec.Command(detourBin, append([]string{"demo", "--port", strconv.Itoa(port)}, args...)...)
	pr, pw := io.Pipe()
	d.cmd.Stdout, d.cmd.Stderr = pw, pw
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait(); pw.Close() }()
	up := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			d.out.Write([]byte(sc.Text() + "\n"))
			if strings.Contains(sc.Text(), "running; reload the StockWeb page") {
				up <- true
			}
		}
		close(up)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			<-done
			if _, err := netns.Sweep("dt-demo-"); err != nil {
				t.Error(err)
			}
			t.Errorf("the demo did not stop within 30s of SIGTERM:\n%s", d.out)
		}
		if t.Failed() {
			t.Logf("demo output:\n%s", d.out)
		}
	})
	select {
	case ok := <-up:
		if !ok {
			t.Fatalf("the demo ended before it was up:\n%s", d.out)
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("the demo was not up after 90s:\n%s", d.out)
	}
	for _, m := range regexp.MustCompile(`(stock\w+(?:-\d+)?) (198\.18\.\d+\.\d+)`).FindAllStringSubmatch(d.out.String(), -1) {
		d.addr[m[1]] = m[2]
	}
	return d
}

// pageLoad loads StockWeb's quotes once through the demo's forwarder: 100 calls to StockData.
func (d *debugDemo) pageLoad(t *testing.T) map[string]int {
	t.Helper()
	client := &http.Client{Timeout: 15 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/api/quotes", d.port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var q struct {
		Counts map[string]int `json:"counts"`
		Errors int            `json:"errors"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
		t.Fatal(err)
	}
	if q.Errors > 0 {
		t.Fatalf("%d calls of the page load failed", q.Errors)
	}
	return q.Counts
}

// processIn returns the PID of the process in namespace name whose command line has every word
// of words, or 0.
func processIn(t *testing.T, name string, words ...string) int {
	t.Helper()
	var want unix.Stat_t
	if err := unix.Stat("/run/netns/"+name, &want); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if !slices.ContainsFunc(words, func(w string) bool { return !slices.Contains(args, w) }) {
			return pid
		}
	}
	return 0
}

// stopByPID signals the process pid (one the demo, which this test started, started) and waits
// for it to be gone.
func stopByPID(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		state := ""
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			s := string(stat)
			state = strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
		}
		if state == "" || state == "Z" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("PID %d still runs 10s after signal %v", pid, sig)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// debugPod is an entry of `detour debug pods -o json`.
type debugPod struct {
	PID       int
	Name      string
	Namespace string
	Identity  string
	Ref       string
	Ready     *bool
	NetNS     struct{ Names []string }
	CertEnd   *time.Time `json:"certificate_not_after"`
	Error     string
}

func debugPods(t *testing.T) []debugPod {
	t.Helper()
	var ps []debugPod
	debugJSON(t, &ps, 0, "pods")
	return ps
}

// tapLine is a line of `detour debug tap -o json`.
type tapLine struct {
	Kind, Direction, Protocol, Service, Method, Path, Endpoint, Error string
	GRPCMethod                                                        string `json:"grpc_method"`
	GRPCStatus                                                        *int   `json:"grpc_status"`
	Peer                                                              string `json:"tls_peer"`
	Status                                                            int
}

// startTap runs `detour debug tap args... -o json` and returns once it says it taps; its lines
// arrive on the channel, closed when it ends.
func startTap(t *testing.T, args ...string) (<-chan tapLine, *syncbuf.Buffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := exec.CommandContext(ctx, detourBin, append([]string{"debug", "tap"}, append(args, "-o", "json")...)...)
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	errs := &syncbuf.Buffer{}
	tapping := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			errs.Write([]byte(sc.Text() + "\n"))
			if strings.Contains(sc.Text(), "detour debug: tapping") {
				tapping <- true
			}
		}
		close(tapping)
	}()
	lines := make(chan tapLine, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l tapLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Errorf("tap line %q: %v", sc.Text(), err)
				continue
			}
			lines <- l
		}
	}()
	t.Cleanup(func() { cancel(); cmd.Wait() })
	if ok := <-tapping; !ok {
		t.Fatalf("detour debug tap %v ended before tapping:\n%s", args, errs)
	}
	return lines, errs
}

// TestDebugAgainstTheDemo runs every `detour debug` command against the demo's topology; then
// makes, one at a time and by hand, each fault issue 13 lists, and checks that `detour debug
// check` exits non-zero, names the fault and hints at its fix within checkBound.
func TestDebugAgainstTheDemo(t *testing.T) {
	nstest.RequireRoot(t)
	// Short certificates, so that one expires soon after the controller stops.
	d := startDebugDemo(t, 18300, "--cert-ttl", "10s")
	const web = "stocks/stockweb"
	webNS, err := netns.Open("dt-demo-stockweb")
	if err != nil {
		t.Fatal(err)
	}
	stockdata := []string{d.addr["stockdata-0"] + ":8080", d.addr["stockdata-1"] + ":8080"}
	if d.addr["stockdata-0"] == "" || d.addr["stockdata-1"] == "" {
		t.Fatalf("no replica addresses in the demo's output: %v", d.addr)
	}

	t.Run("pods lists exactly the demo's meshed pods", func(t *testing.T) {
		var got []string
		for _, p := range debugPods(t) {
			if !slices.ContainsFunc(p.NetNS.Names, func(n string) bool { return strings.HasPrefix(n, "dt-demo-") }) {
				continue // another test's proxy on this machine
			}
			ready := p.Ready != nil && *p.Ready
			got = append(got, fmt.Sprintf("%s %s ready=%v cert=%v", p.Ref, p.Identity, ready, p.CertEnd != nil))
		}
		slices.Sort(got)
		want := []string{
			"stocks/stockdata-0 spiffe://cluster.local/ns/stocks/sa/stockdata ready=true cert=true",
			"stocks/stockdata-1 spiffe://cluster.local/ns/stocks/sa/stockdata ready=true cert=true",
			"stocks/stockweb spiffe://cluster.local/ns/stocks/sa/stockweb ready=true cert=true",
		}
		if !slices.Equal(got, want) {
			t.Fatalf("pods %q, want %q", got, want)
		}
		text := debugCmd(t, checkBound, "pods")
		if !strings.Contains(text.stdout, "POD") || !strings.Contains(text.stdout, "stocks/stockweb") {
			t.Errorf("the table:\n%s", text.stdout)
		}
	})

	t.Run("a healthy pod passes check", func(t *testing.T) {
		rep := healthy(t, web)
		for _, want := range []string{"proxy", "admin-port", "ready", "listeners", "proxy-uid", "rules-backend", "rules-plan", "rules-foreign",
			"redirect-out", "redirect-in", "uid-exempt", "admin-exempt", "discovery", "controller", "trust-anchor", "certificate"} {
			if !slices.ContainsFunc(rep.Checks, func(l checkLine) bool { return l.Check == want && l.Status == "ok" }) {
				t.Errorf("no ok %s line", want)
			}
		}
		if t.Failed() {
			t.Log(rep)
		}
		healthy(t, "stockdata-0") // by name alone too
		if r := debugCmd(t, checkBound, "rules", web); r.code != 0 || !strings.Contains(r.stdout, "no differences") || !strings.Contains(r.stdout, "--pod-name stockweb") {
			t.Errorf("detour debug rules: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("tap shows the requests with their endpoints", func(t *testing.T) {
		out, _ := startTap(t, web, "--service", "stockdata.stocks", "--limit", "100")
		in, _ := startTap(t, "stocks/stockdata-0", "--limit", "5")
		counts := d.pageLoad(t)
		seen := map[string]int{}
		n := 0
		for l := range out {
			if l.Kind != "request" {
				continue
			}
			n++
			if l.Direction != "outbound" || l.Protocol != "http2" || l.GRPCMethod != "stockkube.v1.StockData/GetQuote" ||
				l.GRPCStatus == nil || *l.GRPCStatus != 0 || l.Peer != "spiffe://cluster.local/ns/stocks/sa/stockdata" {
				t.Errorf("outbound request %+v", l)
			}
			seen[l.Endpoint]++
		}
		if n != 100 {
			t.Fatalf("the tap showed %d requests, want the page load's 100", n)
		}
		// The tap's endpoint of every call is the replica that answered it, as StockWeb counted.
		for i, ep := range stockdata {
			if want := counts[fmt.Sprintf("stockdata-%d", i)]; seen[ep] != want {
				t.Errorf("the tap shows %d requests to %s, stockdata-%d answered %d (tap %v, page %v)", seen[ep], ep, i, want, seen, counts)
			}
		}
		m := 0
		for l := range in {
			if l.Kind != "request" {
				continue
			}
			m++
			if l.Direction != "inbound" || l.GRPCMethod != "stockkube.v1.StockData/GetQuote" || l.Peer != "spiffe://cluster.local/ns/stocks/sa/stockweb" ||
				!strings.HasSuffix(l.Endpoint, ":8080") {
				t.Errorf("inbound request %+v", l)
			}
		}
		if m != 5 {
			t.Errorf("the inbound tap showed %d requests, want its limit of 5", m)
		}
	})

	t.Run("conns and endpoints", func(t *testing.T) {
		var conns struct {
			Connections []struct {
				Direction     string
				Dst           string `json:"original_destination"`
				Protocol      string
				BytesReceived uint64 `json:"bytes_received"`
				BytesSent     uint64 `json:"bytes_sent"`
				Endpoints     []struct{ Address string }
			}
		}
		debugJSON(t, &conns, 0, "conns", web)
		found := false
		for _, c := range conns.Connections {
			if c.Direction != "outbound" || c.Dst != "198.19.0.10:80" || c.Protocol != "http2" {
				continue
			}
			var eps []string
			for _, e := range c.Endpoints {
				eps = append(eps, e.Address)
			}
			slices.Sort(eps)
			if slices.Equal(eps, stockdata) && c.BytesReceived > 0 && c.BytesSent > 0 {
				found = true
			}
		}
		if !found {
			t.Errorf("no outbound HTTP/2 connection to the VIP whose streams went to %v, with bytes: %+v", stockdata, conns)
		}
		var eps struct {
			Services []struct {
				Name      string
				Endpoints []struct{ Address string }
			}
		}
		debugJSON(t, &eps, 0, "endpoints", web, "stockdata.stocks")
		if len(eps.Services) != 1 || len(eps.Services[0].Endpoints) != 2 {
			t.Fatalf("endpoints: %+v", eps)
		}
		for _, e := range eps.Services[0].Endpoints {
			if !slices.Contains(stockdata, e.Address) {
				t.Errorf("endpoint %s is not a replica %v", e.Address, stockdata)
			}
		}
		if r := debugCmd(t, checkBound, "endpoints", web, "nothing.here"); r.code == 0 || !strings.Contains(r.stderr, `knows no service "nothing.here"`) {
			t.Errorf("an unknown service: exit %d, %s", r.code, r.stderr)
		}
	})

	var rules struct{ Backend string }
	debugJSON(t, &rules, 0, "rules", web)
	backend, other := rules.Backend, "legacy"
	if backend == "legacy" {
		other = "nft"
	}
	reinit := func(t *testing.T, args ...string) {
		t.Helper()
		mustDetour(t, webNS, append([]string{"init", "--pod-name", "stockweb", "--pod-namespace", "stocks"}, args...)...)
	}

	t.Run("fault 1: Detour's OUTPUT jump deleted", func(t *testing.T) {
		ipt(t, webNS, "iptables-"+backend, "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-m", "comment", "--comment", "detour/outbound", "-j", "DETOUR_OUTBOUND")
		faulty(t, web, map[string]string{
			"rules-plan":   "Detour's jump from OUTPUT is missing",
			"redirect-out": "was not redirected",
		})
		reinit(t)
		healthy(t, web)
	})

	for _, foreign := range []struct{ name, target, says string }{
		{"RETURNs port 80", "RETURN", "returns it from the chain"},
		{"sends port 80 elsewhere", "DNAT --to-destination 198.18.0.99:8080", "sends it elsewhere (DNAT --to-destination 198.18.0.99:8080)"},
	} {
		t.Run("fault 2: a foreign rule ahead of Detour's jump "+foreign.name, func(t *testing.T) {
			ipt(t, webNS, "iptables-"+backend, append([]string{"-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "--dport", "80", "-j"}, strings.Fields(foreign.target)...)...)
			rep := faulty(t, web, map[string]string{
				"rules-foreign":   "rule 1 of OUTPUT, ahead of Detour's jump (rule 2), wins for traffic matching -p tcp --dport 80: " + foreign.says,
				"redirect-out:80": "198.18.255.254:80",
			})
			if !slices.ContainsFunc(rep.Checks, func(l checkLine) bool {
				return l.Check == "rules-foreign" && strings.Contains(l.Hint, "-t nat -D OUTPUT 1")
			}) {
				t.Errorf("the hint does not say how to remove the rule:\n%s", rep)
			}
			ipt(t, webNS, "iptables-"+backend, "-t", "nat", "-D", "OUTPUT", "1")
			healthy(t, web)
		})
	}

	t.Run("fault 3: the rules installed with the other backend too", func(t *testing.T) {
		var dry struct{ Restore map[string]string }
		if err := json.Unmarshal([]byte(mustDetour(t, webNS, "init", "--dry-run", "-o", "json", "--pod-name", "stockweb", "--pod-namespace", "stocks")), &dry); err != nil {
			t.Fatal(err)
		}
		for fam, bin := range map[string]string{"IPv4": "iptables", "IPv6": "ip6tables"} {
			cmd := exec.Command(bin+"-"+other+"-restore", "--noflush")
			cmd.Stdin = strings.NewReader(dry.Restore[fam])
			if out, err := cmdIn(webNS, cmd); err != nil {
				t.Fatalf("%s-%s-restore: %v %s", bin, other, err, out)
			}
		}
		faulty(t, web, map[string]string{"rules-backend": "Detour's rules are in both iptables-legacy and iptables-nft"})
		mustDetour(t, webNS, "init", "--remove", "--backend", other)
		healthy(t, web)
	})

	t.Run("fault 3: the rules moved to the other backend, beside a rule that bypasses them", func(t *testing.T) {
		mustDetour(t, webNS, "init", "--remove", "--backend", backend)
		reinit(t, "--backend", other)
		ipt(t, webNS, "iptables-"+backend, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "198.19.0.0/16", "-j", "ACCEPT")
		faulty(t, web, map[string]string{"rules-backend": "iptables-" + backend + ", which Detour does not use here, holds OUTPUT rule 1"})
		ipt(t, webNS, "iptables-"+backend, "-t", "nat", "-D", "OUTPUT", "1")
		mustDetour(t, webNS, "init", "--remove", "--backend", other)
		reinit(t, "--backend", backend)
		healthy(t, web)
	})

	controller := processIn(t, "dt-demo-node", "--listen", "198.18.0.1:7086")
	if controller == 0 {
		t.Fatal("no controller process in dt-demo-node")
	}

	t.Run("fault 6: the controller stopped", func(t *testing.T) {
		stopByPID(t, controller, syscall.SIGTERM)
		// The proxy notices the lost stream within moments; the check says it keeps routing.
		deadline := time.Now().Add(15 * time.Second)
		for {
			rep, code := debugCheck(t, web)
			kept := slices.ContainsFunc(rep.Checks, func(l checkLine) bool {
				return l.Check == "discovery" && l.Status == "ok" && strings.Contains(l.Detail, "keeps routing by its last snapshot")
			})
			down := slices.ContainsFunc(rep.Checks, func(l checkLine) bool {
				return l.Check == "controller" && l.Status == "failed" && strings.Contains(l.Detail, "unreachable") && l.Hint != ""
			})
			if code != 0 && kept && down {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("15s after the controller stopped, exit %d:\n%s", code, rep)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("fault 5: the certificate expired", func(t *testing.T) {
		// With the controller gone the proxy cannot renew its 10 s certificate.
		deadline := time.Now().Add(30 * time.Second)
		for {
			var end *time.Time
			for _, p := range debugPods(t) {
				if p.Ref == web {
					end = p.CertEnd
				}
			}
			if end != nil && time.Now().After(*end) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the certificate did not expire within 30s of the controller stopping (ends %v)", end)
			}
			time.Sleep(250 * time.Millisecond)
		}
		faulty(t, web, map[string]string{"certificate": "the certificate expired", "controller": "unreachable"})
	})

	t.Run("fault 4: the proxy process killed", func(t *testing.T) {
		pid := 0
		for _, p := range debugPods(t) {
			if p.Ref == web {
				pid = p.PID
			}
		}
		if pid == 0 {
			t.Fatal("no stockweb proxy to kill")
		}
		stopByPID(t, pid, syscall.SIGKILL)
		// Found by name still: its namespace's rules record the pod.
		rep := faulty(t, web, map[string]string{"proxy": "no detour proxy runs in network namespace dt-demo-stockweb"})
		if !slices.ContainsFunc(rep.Checks, func(l checkLine) bool { return l.Check == "redirect" && l.Status == "skipped" }) {
			t.Errorf("the redirect proof is not skipped without a proxy:\n%s", rep)
		}
		for _, p := range debugPods(t) {
			if p.Ref == web {
				t.Errorf("pods still lists the killed proxy: %+v", p)
			}
		}
	})

	t.Run("an unknown pod is an error listing what was found", func(t *testing.T) {
		r := debugCmd(t, 30*time.Second, "check", "no-such-pod")
		if r.code == 0 || !strings.Contains(r.stderr, `no meshed pod "no-such-pod" on this node`) || !strings.Contains(r.stderr, "stocks/stockdata-0 (PID") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
}

// cmdIn runs cmd inside ns and returns its combined output.
func cmdIn(ns *netns.NS, cmd *exec.Cmd) (string, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := ns.Run(cmd)
	return out.String(), err
}

// TestDebugAPodMadeByHand: a namespace made by hand with init and a proxy started by hand (no
// pod name, no discovery, no identity) is found, by PID, namespace name and path, and passes.
func TestDebugAPodMadeByHand(t *testing.T) {
	topo := nstest.Topology(t)
	pod := addPod(t, topo, "pod")
	mp := mesh(t, pod, "")
	pid := mp.proxy.Process.Pid
	var found *debugPod
	ps := debugPods(t)
	for i, p := range ps {
		if p.PID == pid {
			found = &ps[i]
		}
	}
	if found == nil || !slices.Contains(found.NetNS.Names, pod.NS.Name) || found.Ref != strconv.Itoa(pid) || found.Ready == nil || !*found.Ready {
		t.Fatalf("pods: %+v, want PID %d in %s, ready", ps, pid, pod.NS.Name)
	}
	for _, arg := range []string{strconv.Itoa(pid), pod.NS.Name, pod.NS.Path()} {
		rep := healthy(t, arg)
		for check, status := range map[string]string{"controller": "skipped", "certificate": "skipped", "discovery": "ok", "redirect-in": "ok"} {
			if !slices.ContainsFunc(rep.Checks, func(l checkLine) bool { return l.Check == check && l.Status == status }) {
				t.Errorf("check %s: no %s line %s:\n%s", arg, status, check, rep)
			}
		}
	}
}
