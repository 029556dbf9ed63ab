package integration

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/detourmesh/detour/internal/browser"
	"github.com/detourmesh/detour/internal/syncbuf"
	"github.com/detourmesh/detour/netns/nstest"
)

// demoCounts parses the calls per server of each StockWeb page load the demo printed.
func demoCounts(out string) []map[string]int {
	var loads []map[string]int
	row := regexp.MustCompile(`^\s+(stockdata-\d+)\s+(\d+)`)
	for line := range strings.Lines(out) {
		if strings.Contains(line, "StockWeb page load:") {
			loads = append(loads, map[string]int{})
			continue
		}
		if m := row.FindStringSubmatch(line); m != nil && len(loads) > 0 {
			n, _ := strconv.Atoi(m[2])
			loads[len(loads)-1][m[1]] = n
		}
	}
	return loads
}

func noDemoLeftovers(t *testing.T) {
	t.Helper()
	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(list), "dt-demo-") {
		t.Fatalf("the demo left namespaces behind:\n%s", list)
	}
	procs, _ := exec.Command("pgrep", "-f", "stockdata --listen|stockweb --listen").Output()
	if len(strings.TrimSpace(string(procs))) > 0 {
		t.Fatalf("the demo left processes behind: %s", procs)
	}
}

func TestDemoShowsTheProblemAndTheFix(t *testing.T) {
	nstest.RequireRoot(t)
	for _, replicas := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			out, err := exec.Command(detourBin, "demo", "--replicas", strconv.Itoa(replicas), "--duration", "1ms", "--port", "18000").CombinedOutput()
			if err != nil {
				t.Fatalf("detour demo: %v\n%s", err, out)
			}
			loads := demoCounts(string(out))
			if len(loads) != 2 {
				t.Fatalf("want two page loads (without and with the mesh), got %v:\n%s", loads, out)
			}
			without, with := loads[0], loads[1]
			busy := 0
			for _, n := range without {
				if n > 0 {
					busy++
				}
			}
			if busy != 1 {
				t.Errorf("without the mesh one replica should serve all 100 calls: %v", without)
			}
			even := 100 / float64(replicas)
			for i := range replicas {
				n := float64(with[fmt.Sprintf("stockdata-%d", i)])
				if n < even*0.85 || n > even*1.15 {
					t.Errorf("with the mesh stockdata-%d served %v calls, want within 15%% of %.1f: %v", i, n, even, with)
				}
			}
			if !strings.Contains(string(out), "over mutual TLS, the client proved spiffe://cluster.local/ns/stocks/sa/stockweb") {
				t.Errorf("the demo does not show StockWeb -> StockData as mutual TLS")
			}
			if t.Failed() {
				t.Logf("demo output:\n%s", out)
			}
			noDemoLeftovers(t)
		})
	}
	t.Run("without the mesh only", func(t *testing.T) {
		out, err := exec.Command(detourBin, "demo", "--no-mesh", "--duration", "1ms", "--port", "18000").CombinedOutput()
		if err != nil {
			t.Fatalf("detour demo --no-mesh: %v\n%s", err, out)
		}
		if loads := demoCounts(string(out)); len(loads) != 1 {
			t.Fatalf("want one page load, got %v:\n%s", loads, out)
		}
		noDemoLeftovers(t)
	})
}

// TestDemoCleansUpAfterACrash: a demo killed with SIGKILL leaves its namespaces and processes;
// the next run removes them first.
func TestDemoCleansUpAfterACrash(t *testing.T) {
	nstest.RequireRoot(t)
	cmd := exec.Command(detourBin, "demo", "--port", "18100")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	var seen strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			seen.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "running; reload the StockWeb page") {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			t.Fatalf("the demo ended before it was up:\n%s", seen.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the demo was not up after 60s:\n%s", seen.String())
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	go io.Copy(io.Discard, stdout)

	out, err := exec.Command(detourBin, "demo", "--no-mesh", "--duration", "1ms", "--port", "18100").CombinedOutput()
	if err != nil {
		t.Fatalf("the run after the crash: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "removed dt-demo-") {
		t.Errorf("the run after the crash did not say it swept the leftovers:\n%s", out)
	}
	noDemoLeftovers(t)
}

// startDemo runs `detour demo` with args until it prints that it is up, and returns it with
// what it printed so far.
func startDemo(t *testing.T, args ...string) (*exec.Cmd, *syncbuf.Buffer) {
	t.Helper()
	cmd := exec.Command(detourBin, append([]string{"demo"}, args...)...)
	out := &syncbuf.Buffer{}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out.Write([]byte(sc.Text() + "\n"))
			if strings.Contains(sc.Text(), "running; reload the StockWeb page") {
				up <- true
			}
		}
		close(up)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		pw.Close()
	})
	select {
	case ok := <-up:
		if !ok {
			t.Fatalf("the demo ended before it was up:\n%s", out)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("the demo was not up after 60s:\n%s", out)
	}
	return cmd, out
}

// TestDemoPageInABrowser opens StockWeb through the demo's loopback forwarder in headless
// Chromium, as a user would, and finds several servers in the Server column; then SIGTERM
// ends the demo and everything it made.
func TestDemoPageInABrowser(t *testing.T) {
	nstest.RequireRoot(t)
	cmd, out := startDemo(t, "--port", "18200", "--replicas", "3")
	ctx := browser.Open(t)
	if err := chromedp.Do(ctx,
		chromedp.Navigate("http://127.0.0.1:18200/"),
		chromedp.WaitVisible(chromedp.CSS("td.server")),
	); err != nil {
		t.Fatal(err)
	}
	servers, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`Array.from(document.querySelectorAll("td.server"), td => td.textContent.trim())`))
	if err != nil {
		t.Fatal(err)
	}
	browser.Screenshot(t, ctx, browser.ArtifactPath(t, "stockweb-through-the-mesh.png"))
	distinct := slices.Compact(slices.Sorted(slices.Values(servers)))
	if len(servers) != 100 || len(distinct) < 2 {
		t.Fatalf("%d Server cells naming %v: want 100 naming at least two replicas\n%s", len(servers), distinct, out)
	}
	t.Logf("the page shows servers %v", distinct)

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the demo exited with %v after SIGTERM\n%s", err, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the demo did not end within 30s of SIGTERM\n%s", out)
	}
	noDemoLeftovers(t)
}
