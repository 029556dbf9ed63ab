package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/detourmesh/detour/internal/browser"
	"github.com/detourmesh/detour/netns"
	"github.com/detourmesh/detour/netns/nstest"
)

// The demo's ports in these tests: its forwarders from 18400, the dashboard at 18480.
const (
	dashDemoPort = 18400
	dashPort     = 18480
)

// dashDemo is the demo these tests run, with reports every second (the window keeps 10 s
// slots; a shorter report interval only makes the figures fresher).
type dashDemo struct {
	*debugDemo
	control string
}

func startDashDemo(t *testing.T) *dashDemo {
	control := filepath.Join(t.TempDir(), "demo.sock")
	d := startDebugDemo(t, dashDemoPort, "--dashboard-port", strconv.Itoa(dashPort), "--report-interval", "1s", "--control", control)
	if !strings.Contains(d.out.String(), fmt.Sprintf("Detour dashboard           http://127.0.0.1:%d/", dashPort)) {
		t.Fatalf("the demo did not print the dashboard's URL:\n%s", d.out)
	}
	return &dashDemo{debugDemo: d, control: control}
}

// detour runs the detour CLI, bounded in time, and returns its stdout; a failure ends the test.
func (d *dashDemo) detour(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, detourBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("detour %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// statRow is what the tests read of detour stat -o json.
type statRow struct {
	Name        string   `json:"name"`
	Requests    uint64   `json:"requests"`
	RPS         float64  `json:"rps"`
	SuccessRate *float64 `json:"success_rate"`
	MTLSShare   *float64 `json:"mtls_share"`
	P99         *float64 `json:"p99_ms"`
	Replicas    []statRow
}

func (d *dashDemo) stat(t *testing.T, args ...string) map[string]statRow {
	t.Helper()
	out := d.detour(t, append([]string{"stat", "--controller", fmt.Sprintf("http://127.0.0.1:%d", dashPort), "-o", "json"}, args...)...)
	var st struct{ Rows []statRow }
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("detour stat %v -o json: %v\n%s", args, err, out)
	}
	rows := map[string]statRow{}
	for _, r := range st.Rows {
		rows[r.Name] = r
	}
	return rows
}

// load makes StockWeb page loads (100 calls to StockData each) until stop is closed, at most
// 3,000 loads or 3 minutes, and tallies the calls per replica and the failed ones.
type stockLoad struct {
	mu     sync.Mutex
	counts map[string]int
	errors int
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

// halt stops the load and waits for its last page load.
func (l *stockLoad) halt() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

func (d *dashDemo) pageLoads(n int) (map[string]int, int, error) {
	counts := map[string]int{}
	errors := 0
	client := &http.Client{Timeout: 15 * time.Second}
	for range n {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/api/quotes", d.port))
		if err != nil {
			return counts, errors, err
		}
		var q struct {
			Counts map[string]int `json:"counts"`
			Errors int            `json:"errors"`
		}
		err = json.NewDecoder(resp.Body).Decode(&q)
		resp.Body.Close()
		if err != nil {
			return counts, errors, err
		}
		for s, c := range q.Counts {
			counts[s] += c
		}
		errors += q.Errors
	}
	return counts, errors, nil
}

func (d *dashDemo) startLoad(t *testing.T) *stockLoad {
	l := &stockLoad{counts: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		deadline := time.Now().Add(3 * time.Minute)
		for i := 0; i < 3000 && time.Now().Before(deadline); i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			c, e, err := d.pageLoads(1)
			if err != nil {
				t.Errorf("page load: %v", err)
				return
			}
			l.mu.Lock()
			for s, n := range c {
				l.counts[s] += n
			}
			l.errors += e
			l.mu.Unlock()
		}
	}()
	t.Cleanup(l.halt)
	return l
}

// TestDashboardStatAndPromtool runs the demo, scales StockData to three replicas, and checks
// what a user checks: the dashboard in Chromium shows each replica's share of the requests the
// test made; detour stat under load shows every replica serving at 100 % success, then, once
// stockdata-1 fails half its calls, its success rate near 50 % and the others' still 100 %;
// and every proxy's and the controller's /metrics pass promtool check metrics.
func TestDashboardStatAndPromtool(t *testing.T) {
	nstest.RequireRoot(t)
	d := startDashDemo(t)

	// detour dashboard finds the forwarded dashboard and prints its URL.
	if out := d.detour(t, "dashboard", "--controller", fmt.Sprintf("http://127.0.0.1:%d", dashPort)); !strings.Contains(out, fmt.Sprintf("http://127.0.0.1:%d/", dashPort)) {
		t.Fatalf("detour dashboard printed %q", out)
	}
	out := d.detour(t, "demo", "scale", "stockdata=3", "--control", d.control)
	m := regexp.MustCompile(`added stockdata-2 (198\.18\.\d+\.\d+)`).FindStringSubmatch(out)
	if !strings.Contains(out, "stockdata: 3 replicas") || m == nil {
		t.Fatalf("detour demo scale stockdata=3 printed %q", out)
	}
	d.addr["stockdata-2"] = m[1]

	t.Run("dashboard in Chromium shows each replica's share", func(t *testing.T) {
		// What the window holds before the test's calls: the demo's own meshed page load, 100
		// calls, once StockWeb's proxy has reported them.
		before := map[string]int{}
		for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
			svc := d.stat(t, "svc/stockdata.stocks", "-t", "10m")["stockdata.stocks"]
			if svc.Requests >= 100 {
				for _, r := range svc.Replicas {
					before[r.Name] = int(r.Requests)
				}
				break
			}
			if time.Since(start) > 15*time.Second {
				t.Fatalf("the demo's own 100 calls are not in detour stat svc after 15s: %+v", svc)
			}
		}
		counts, errs, err := d.pageLoads(10)
		if err != nil || errs > 0 {
			t.Fatalf("page loads: %v, %d failed calls", err, errs)
		}
		total := 0
		for _, n := range counts {
			total += n
		}
		if counts["stockdata-2"] == 0 {
			t.Fatalf("the scaled-up replica served none of %d calls: %v", total, counts)
		}
		ctx := browser.Open(t)
		url := fmt.Sprintf("http://127.0.0.1:%d/svc/stockdata.stocks?window=10m", dashPort)
		if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
			t.Fatal(err)
		}
		// Live data: the page refreshes by itself until every request made is in its bars.
		type replica struct {
			Name     string  `json:"name"`
			Requests int     `json:"requests"`
			Share    float64 `json:"share"`
		}
		var shown []replica
		deadline := time.Now().Add(30 * time.Second)
		for {
			var err error
			shown, err = chromedp.Run(ctx, chromedp.Evaluate[[]replica](`Array.from(document.querySelectorAll("#replicas .replica"),
				e => ({name: e.dataset.name, requests: +e.dataset.requests, share: +e.dataset.share}))`))
			if err != nil {
				t.Fatal(err)
			}
			sum := 0
			for _, r := range shown {
				sum += r.Requests - before[r.Name]
			}
			if len(shown) == 3 && sum >= total {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 30s the dashboard shows %+v, want 3 replicas holding at least the %d calls made", shown, total)
			}
			time.Sleep(200 * time.Millisecond) // the page's own refresh is what is awaited
		}
		browser.Screenshot(t, ctx, browser.ArtifactPath(t, "dashboard-stockdata.png"))
		for _, r := range shown {
			// What the test's calls added to the replica's count is their split, within 2 points.
			want := float64(counts[r.Name]) / float64(total)
			if got := float64(r.Requests-before[r.Name]) / float64(total); math.Abs(got-want) > 0.02 {
				t.Errorf("the dashboard counts %d more requests for %s (%.1f%% of the test's %d), StockWeb's answers say %d (%.1f%%)",
					r.Requests-before[r.Name], r.Name, got*100, total, counts[r.Name], want*100)
			}
			// The share it draws also holds the demo's own page load (100 calls, before the
			// scale-up): within 4 points of the test's split.
			if math.Abs(r.Share-want) > 0.04 {
				t.Errorf("the dashboard shows %s with %.1f%% of the requests, the test's calls give it %.1f%% (%v)", r.Name, r.Share*100, want*100, counts)
			}
		}
		// The overview lists the service and draws it in the graph.
		if err := chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("http://127.0.0.1:%d/", dashPort)),
			chromedp.WaitVisible(chromedp.CSS(`#services tr[data-name="stockdata.stocks"]`))); err != nil {
			t.Fatal(err)
		}
		found, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`Array.from(document.querySelectorAll("#graph .node text")).some(e => e.textContent.includes("stockdata.stocks") && e.getBBox().width > 0)`))
		if err != nil {
			t.Fatal(err)
		}
		browser.Screenshot(t, ctx, browser.ArtifactPath(t, "dashboard-overview.png"))
		if !found {
			t.Error("the service graph does not draw stockdata.stocks")
		}
	})

	l := d.startLoad(t)
	replicas := []string{"stockdata-0", "stockdata-1", "stockdata-2"}
	// waitStat polls detour stat pod over the last 10 s until ok holds for the rows; every
	// poll must also pass always (so a breach at any time fails the test).
	waitStat := func(t *testing.T, what string, always, ok func(map[string]statRow) string) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for {
			rows := d.stat(t, "pod", "-t", "10s")
			if why := always(rows); why != "" {
				t.Fatal(why)
			}
			why := ok(rows)
			if why == "" {
				t.Logf("%s: %s", what, d.detour(t, "stat", "pod", "-t", "10s", "--controller", fmt.Sprintf("http://127.0.0.1:%d", dashPort)))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after 45s: %s\n%s", what, why, d.detour(t, "stat", "pod", "-t", "10s", "--controller", fmt.Sprintf("http://127.0.0.1:%d", dashPort)))
			}
			time.Sleep(time.Second) // reports come every second
		}
	}
	success := func(r statRow) float64 {
		if r.SuccessRate == nil {
			return math.NaN()
		}
		return *r.SuccessRate
	}
	never := func(map[string]statRow) string { return "" }
	t.Run("stat under load shows every replica at 100 percent", func(t *testing.T) {
		waitStat(t, "every replica serving", never, func(rows map[string]statRow) string {
			for _, name := range replicas {
				r := rows[name]
				if r.RPS <= 0 || success(r) != 1 || r.MTLSShare == nil || *r.MTLSShare != 1 {
					return fmt.Sprintf("%s: %+v", name, r)
				}
			}
			return ""
		})
	})
	t.Run("a replica failing half its calls drops to about 50 percent, the others do not", func(t *testing.T) {
		d.detour(t, "demo", "fault", "stockdata-1", "--fail", "0.5", "--control", d.control)
		healthyOthers := func(rows map[string]statRow) string {
			for _, name := range []string{"stockdata-0", "stockdata-2"} {
				if r := rows[name]; r.SuccessRate != nil && success(r) != 1 {
					return fmt.Sprintf("%s's success rate fell to %.2f%% while only stockdata-1 fails", name, success(r)*100)
				}
			}
			return ""
		}
		waitStat(t, "stockdata-1 failing", healthyOthers, func(rows map[string]statRow) string {
			r := rows["stockdata-1"]
			if s := success(r); !(s > 0.4 && s < 0.6) || r.Requests < 100 {
				return fmt.Sprintf("stockdata-1: %+v", r)
			}
			for _, name := range []string{"stockdata-0", "stockdata-2"} {
				if rows[name].RPS <= 0 {
					return name + " serves nothing"
				}
			}
			return ""
		})
		t.Logf("detour stat svc -t 30s:\n%s", d.detour(t, "stat", "svc", "-t", "30s", "--controller", fmt.Sprintf("http://127.0.0.1:%d", dashPort)))
		l.halt()
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.errors == 0 {
			t.Error("StockWeb saw no failed call while stockdata-1 failed half of its")
		}
	})
	t.Run("promtool check metrics passes on every proxy and the controller", func(t *testing.T) {
		node := &netns.NS{Name: "dt-demo-node"}
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: node.DialContext}}
		urls := map[string]string{"controller": fmt.Sprintf("http://127.0.0.1:%d/metrics", dashPort)}
		for _, pod := range []string{"stockweb", "stockdata-0", "stockdata-1", "stockdata-2"} {
			if d.addr[pod] == "" {
				t.Fatalf("no address for %s in the demo's output", pod)
			}
			urls[pod] = fmt.Sprintf("http://%s:7190/metrics", d.addr[pod])
		}
		for who, url := range urls {
			c := http.DefaultClient
			if who != "controller" {
				c = client
			}
			resp, err := c.Get(url)
			if err != nil {
				t.Fatalf("%s: %v", who, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("%s %s: %v %s", who, url, err, resp.Status)
			}
			if who != "controller" && !bytes.Contains(body, []byte("detour_requests_total{")) {
				t.Errorf("%s's /metrics has no detour_requests_total series", who)
			}
			if who == "controller" && !bytes.Contains(body, []byte("detour_telemetry_series ")) {
				t.Errorf("the controller's /metrics has no detour_telemetry_series")
			}
			cmd := exec.Command("promtool", "check", "metrics")
			cmd.Stdin = bytes.NewReader(body)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("promtool check metrics on %s's /metrics: %v\n%s", who, err, out)
			}
		}
	})
}
