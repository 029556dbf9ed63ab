package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/examples/stockkube/stockdata"
	"github.com/detourmesh/detour/examples/stockkube/stockpb"
	"github.com/detourmesh/detour/internal/syncbuf"
	"github.com/detourmesh/detour/netns"
)

// The resilience tests: a client pod and StockData replicas, every pod meshed with mutual TLS
// by a controller, steady unary load over one client connection, and a fault in one replica.

const getQuote = "/stockkube.v1.StockData/GetQuote"

// retryAll is a policy retrying GetQuote on UNAVAILABLE and on resets (it is idempotent), with
// ejections short enough that a recovered replica is readmitted within a test's seconds.
const retryAll = `    retry: {on: [unavailable, reset], attempts: 3, backoff: 5ms}
    accrual: {consecutiveFailures: 5, baseEjection: 500ms, maxEjection: 2s}
    routes:
      - {path: ` + getQuote + `, idempotent: true}
`

// roundRobin is the policy line that makes the service balance round robin.
const roundRobin = "    balancer: round-robin\n"

// resilientMesh is the topology of the resilience tests.
type resilientMesh struct {
	topo     *netns.Topology
	ca       *meshCA
	client   *meshPod
	replicas []*netns.Pod
	vip      netip.AddrPort
	cc       *grpc.ClientConn
}

// newResilientMesh makes n replica pods (serve starts replica i's application), the StockData
// service at a VIP with the replicas as meshed endpoints and policy (discovery file lines at the
// service's indentation), and a meshed client with one gRPC connection to the VIP.
func newResilientMesh(t testing.TB, n int, policy string, serve func(i int, pod *netns.Pod)) *resilientMesh {
	t.Helper()
	return newResilientMeshOf(t, n, policy, serve, true)
}

// newResilientMeshOf is newResilientMesh for any application: with grpc false, it makes no gRPC
// connection and no warm-up call.
func newResilientMeshOf(t testing.TB, n int, policy string, serve func(i int, pod *netns.Pod), grpcApp bool) *resilientMesh {
	t.Helper()
	m := &resilientMesh{topo: nstestTopology(t), vip: netip.MustParseAddrPort("198.19.0.10:80")}
	m.ca = newMeshCA(t, m.topo, 24*time.Hour)
	client := addPod(t, m.topo, "client")
	stockID := spiffeID("stocks", "stockdata")
	var flags [][]string
	for i := range n {
		p := addPod(t, m.topo, fmt.Sprintf("stockdata-%d", i))
		serve(i, p)
		m.replicas = append(m.replicas, p)
		flags = append(flags, m.ca.meshFlags(t, stockID))
	}
	cf := m.ca.meshFlags(t, spiffeID("web", "stockweb"))
	m.ca.start(t, stockDiscoveryWithIdentity(m.vip, m.replicas, stockID)+policy)
	for i, p := range m.replicas {
		meshWithIdentity(t, p, flags[i])
	}
	m.client = meshWithIdentity(t, client, cf)
	if !grpcApp {
		return m
	}
	m.cc = grpcClientIn(t, client.NS, m.vip.String())
	// Every replica answers before the load starts: the first calls also resolve the service.
	sc := stockpb.NewStockDataClient(m.cc)
	seen := map[string]bool{}
	waitFor(t, 20*time.Second, "every replica to answer through the mesh", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if q, err := sc.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME"}); err == nil {
			seen[q.Server] = true
		}
		return len(seen) == n
	})
	return m
}

// waitFor polls cond every 20 ms until it holds or bound passes, then fails t naming what.
func waitFor(t testing.TB, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	poll(t, bound, 20*time.Millisecond, func() string {
		if cond() {
			return ""
		}
		return "waiting for " + what
	})
}

// call is one call of a rateLoad.
type call struct {
	at, took time.Duration // since the load started
	server   string
	err      error
}

// rateLoad is unary GetQuote calls at a fixed rate over one connection, each with its own
// deadline, for a bounded time.
type rateLoad struct {
	start time.Time
	mu    sync.Mutex
	calls []call
	done  chan struct{}
}

func startRateLoad(cc *grpc.ClientConn, rate int, d, deadline time.Duration) *rateLoad {
	l := &rateLoad{start: time.Now(), done: make(chan struct{})}
	client := stockpb.NewStockDataClient(cc)
	go func() {
		defer close(l.done)
		var wg sync.WaitGroup
		interval := time.Second / time.Duration(rate)
		for next := l.start; time.Since(l.start) < d; next = next.Add(interval) {
			time.Sleep(time.Until(next))
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				at := time.Since(l.start)
				q, err := client.GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME"})
				c := call{at: at, took: time.Since(l.start) - at, err: err}
				if err == nil {
					c.server = q.Server
				}
				l.mu.Lock()
				l.calls = append(l.calls, c)
				l.mu.Unlock()
			}()
		}
		wg.Wait()
	}()
	return l
}

func (l *rateLoad) elapsed() time.Duration { return time.Since(l.start) }

func (l *rateLoad) wait() []call {
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.SortFunc(l.calls, func(a, b call) int { return int(a.at - b.at) })
	return l.calls
}

// failures lists the failed calls' errors, at most a few of each kind.
func failures(calls []call) (n int, sample []string) {
	kinds := map[string]int{}
	for _, c := range calls {
		if c.err != nil {
			n++
			if k := c.err.Error(); kinds[k] < 2 {
				kinds[k]++
				sample = append(sample, fmt.Sprintf("at %v: %v", c.at.Round(time.Millisecond), c.err))
			}
		}
	}
	return n, sample
}

// p99 is the 99th percentile latency of the calls that started in [from, to).
func p99(calls []call, from, to time.Duration) time.Duration {
	var lat []time.Duration
	for _, c := range calls {
		if c.at >= from && c.at < to {
			lat = append(lat, c.took)
		}
	}
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[min(len(lat)-1, len(lat)*99/100)]
}

// stockProcess runs the stockdata binary in pod as replica id, ending it with the test.
type stockProcess struct {
	cmd    *exec.Cmd
	exited chan error
}

func startStockProcess(t testing.TB, pod *netns.Pod, id string, delay time.Duration) *stockProcess {
	t.Helper()
	cmd := exec.Command(filepath.Join(filepath.Dir(detourBin), "stockdata"), "--listen", ":8080", "--id", id, "--delay", delay.String())
	log := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := pod.NS.Start(cmd); err != nil {
		t.Fatal(err)
	}
	sp := &stockProcess{cmd: cmd, exited: make(chan error, 1)}
	go func() { sp.exited <- cmd.Wait() }()
	t.Cleanup(func() { sp.kill() })
	// Serving once its port takes connections (on loopback: the pod's own address would reach
	// its proxy, which accepts whether or not the application listens).
	waitFor(t, 5*time.Second, "stockdata to listen", func() bool {
		var c net.Conn
		err := pod.NS.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", "127.0.0.1:8080", time.Second)
			return err
		})
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return sp
}

// kill ends the process with SIGKILL (once) and waits for it.
func (sp *stockProcess) kill() {
	if sp.cmd.ProcessState == nil {
		sp.cmd.Process.Signal(syscall.SIGKILL)
		err := <-sp.exited
		sp.exited <- err
	}
}

// metricValue sums the samples of name whose labels contain every one of labels.
func metricSum(t testing.TB, m *meshPod, name string, labels ...string) float64 {
	t.Helper()
	_, body := adminAt(m.NS, netip.AddrPortFrom(m.IPv4, 7190), "/metrics")
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// endpointState is the state /debug/endpoints gives the client's endpoint addr.
func endpointState(t *testing.T, m *meshPod, addr netip.AddrPort) (state string, ejections int64) {
	t.Helper()
	_, body := m.admin(t, "/debug/endpoints")
	var doc struct {
		Services []struct {
			Endpoints []struct {
				Address   string `json:"address"`
				State     string `json:"state"`
				Ejections int64  `json:"ejections"`
			} `json:"endpoints"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("/debug/endpoints: %v\n%s", err, body)
	}
	for _, s := range doc.Services {
		for _, e := range s.Endpoints {
			if e.Address == addr.String() {
				return e.State, e.Ejections
			}
		}
	}
	return "", 0
}

// TestReplicaKilledAndRestartedUnderLoad: one of three replicas is SIGKILLed 3 s into steady
// load and restarted 3 s later. The client sees no failed call: calls the dead replica's proxy
// could not deliver come back refused and go to another replica, calls in flight in the killed
// process are retried (GetQuote is declared idempotent), and the restarted replica is probed
// back into rotation. The service balances round robin, so that the time the restarted replica
// takes to get calls measures the probing alone: P2C may keep preferring its peers for their
// latency (a replica whose first calls were slow is left alone until its estimate decays).
func TestReplicaKilledAndRestartedUnderLoad(t *testing.T) {
	f := killAndRestart(t, retryAll+roundRobin)
	t.Logf("%d calls, %d failed; p99 %v during the fault (%v..%v), %v before it; the restarted replica answered again %v after its restart",
		len(f.calls), f.failed, f.faultP99, f.killed.Round(time.Millisecond), f.restarted.Round(time.Millisecond), f.beforeP99, f.readmitted)
	t.Logf("client proxy: retries %v (refused %v, reset %v, status %v), ejections of the victim %v",
		metricSum(t, f.client, "detour_retries_total"), metricSum(t, f.client, "detour_retries_total", `reason="refused"`),
		metricSum(t, f.client, "detour_retries_total", `reason="reset"`), metricSum(t, f.client, "detour_retries_total", `reason="status"`),
		metricSum(t, f.client, "detour_endpoint_ejections_total", f.victim.IPv4.String()))
	if f.failed > 0 {
		t.Errorf("%d of %d calls failed, want none: %v", f.failed, len(f.calls), f.sample)
	}
	if f.readmitted < 0 || f.readmitted > 4*time.Second {
		t.Errorf("the restarted replica answered again %v after its restart, want within 4 s", f.readmitted)
	}
}

// failover is the outcome of killAndRestart.
type failover struct {
	calls               []call
	failed              int
	sample              []string
	killed, restarted   time.Duration
	faultP99, beforeP99 time.Duration
	readmitted          time.Duration // -1: never
	client              *meshPod
	victim              *netns.Pod
}

// killAndRestart is the failover run: 300 calls/s for 10 s over one client connection to three
// replicas taking 10 ms a call (so that calls are in flight in the process killed), one
// SIGKILLed 3 s in and restarted 3 s later; the service has policy.
func killAndRestart(tb testing.TB, policy string) failover {
	const serviceTime = 10 * time.Millisecond
	procs := make([]*stockProcess, 3)
	m := newResilientMesh(tb, 3, policy, func(i int, pod *netns.Pod) {
		procs[i] = startStockProcess(tb, pod, pod.Name, serviceTime)
	})
	f := failover{client: m.client, victim: m.replicas[0], readmitted: -1}
	l := startRateLoad(m.cc, 300, 10*time.Second, 5*time.Second)
	waitFor(tb, 5*time.Second, "the load's third second", func() bool { return l.elapsed() >= 3*time.Second })
	f.killed = l.elapsed()
	procs[0].kill()
	waitFor(tb, 5*time.Second, "3 s after the kill", func() bool { return l.elapsed() >= f.killed+3*time.Second })
	f.restarted = l.elapsed()
	startStockProcess(tb, f.victim, f.victim.Name, serviceTime)
	f.calls = l.wait()
	f.failed, f.sample = failures(f.calls)
	for _, c := range f.calls {
		if c.server == f.victim.Name && c.at > f.restarted {
			f.readmitted = c.at - f.restarted
			break
		}
	}
	f.faultP99, f.beforeP99 = p99(f.calls, f.killed, f.restarted+time.Second), p99(f.calls, 0, f.killed)
	return f
}

// BenchmarkFailover measures the failover run (killAndRestart): calls failed, p99 latency while
// a replica is down and just after it is back, and the time the restarted replica takes to get
// calls again. One run per iteration; `make bench` runs one.
//
// "retries" is the service with GetQuote declared idempotent and retried (retryAll); "defaults"
// is a service with no policy: only what never reached the application is resent, so the calls
// in flight in the killed process fail. Both balance round robin (see the test); the last run is
// "retries" with the default balancer, P2C.
func BenchmarkFailover(b *testing.B) {
	for _, run := range []struct{ name, policy string }{{"retries", retryAll + roundRobin}, {"defaults", roundRobin}, {"retries, p2c-ewma", retryAll}} {
		b.Run(run.name, func(b *testing.B) {
			for b.Loop() {
				f := killAndRestart(b, run.policy)
				b.ReportMetric(float64(f.failed), "failed-calls")
				b.ReportMetric(float64(len(f.calls)), "calls")
				b.ReportMetric(ms(f.faultP99), "fault-p99-ms")
				b.ReportMetric(ms(f.beforeP99), "steady-p99-ms")
				b.ReportMetric(ms(f.readmitted), "readmit-ms")
			}
		})
	}
}

// TestReplicaBlackHoled: 3 s into steady load, every packet to and from one replica is dropped
// on the node (no reset). Keepalive finds the dead connection within its bound (1 s of silence,
// 2 s for the PING's answer), the calls in flight on it are retried elsewhere, and every call
// succeeds within its deadline.
func TestReplicaBlackHoled(t *testing.T) {
	m := newResilientMesh(t, 3, retryAll, func(i int, pod *netns.Pod) { serveStockData(t, pod, pod.Name, 0) })
	victim := m.replicas[0]
	ep := netip.AddrPortFrom(victim.IPv4, 8080)
	t.Cleanup(func() {
		m.topo.Node.Do(func() error { _, err := cmdOut("ebtables", "-F", "FORWARD"); return err })
	})
	l := startRateLoad(m.cc, 300, 9*time.Second, 8*time.Second)
	waitFor(t, 5*time.Second, "the load's third second", func() bool { return l.elapsed() >= 3*time.Second })
	dropped := l.elapsed()
	err := m.topo.Node.Do(func() error {
		for _, dir := range []string{"--ip-src", "--ip-dst"} {
			if _, err := cmdOut("ebtables", "-A", "FORWARD", "-p", "IPv4", dir, victim.IPv4.String(), "-j", "DROP"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var found time.Duration
	waitFor(t, 8*time.Second, "the black-holed endpoint to be ejected", func() bool {
		state, _ := endpointState(t, m.client, ep)
		found = l.elapsed() - dropped
		return state == "ejected" || state == "probing"
	})
	calls := l.wait()
	failed, sample := failures(calls)
	t.Logf("%d calls, %d failed; the dead connection was found %v after the drop; p99 %v during the fault, %v before it",
		len(calls), failed, found.Round(10*time.Millisecond), p99(calls, dropped, dropped+4*time.Second), p99(calls, 0, dropped))
	if failed > 0 {
		t.Errorf("%d of %d calls failed, want none: %v", failed, len(calls), sample)
	}
	m.client.waitLog(t, "closing upstream connection: keepalive ping unanswered")
	if !strings.Contains(m.client.log.String(), ep.String()) {
		t.Errorf("the keepalive did not close the connection to %v", ep)
	}
	// The bound: a PING at the first janitor tick (250 ms) after 1 s of silence, unanswered for
	// 2 s, seen at the next tick: 3.5 s; a second more for a loaded machine's scheduling.
	if found > 4500*time.Millisecond {
		t.Errorf("the dead connection was found %v after the drop, want within the keepalive's bound (3.5 s)", found)
	}
}

// serveStockDataWith runs a StockData replica whose calls go through ic first.
func serveStockDataWith(t testing.TB, pod *netns.Pod, id string, delay time.Duration, ic grpc.UnaryServerInterceptor) {
	t.Helper()
	serveStockDataOpts(t, pod, id, delay, grpc.UnaryInterceptor(ic))
}

// serveStockDataOpts runs a StockData replica on a gRPC server with opts.
func serveStockDataOpts(t testing.TB, pod *netns.Pod, id string, delay time.Duration, opts ...grpc.ServerOption) {
	t.Helper()
	var lns []net.Listener
	err := pod.NS.Do(func() error {
		for _, network := range []string{"tcp4", "tcp6"} {
			ln, err := net.Listen(network, ":8080")
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(opts...)
	(&stockdata.Server{ID: id, Delay: delay}).Register(g)
	for _, ln := range lns {
		go g.Serve(ln)
	}
	t.Cleanup(g.Stop)
}

// halfFailing answers every other GetQuote UNAVAILABLE, counting the calls it saw.
func halfFailing(calls *atomic.Int64) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if calls.Add(1)%2 == 0 {
			return nil, status.Error(codes.Unavailable, "replica overloaded")
		}
		return h(ctx, req)
	}
}

func passThrough(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	return h(ctx, req)
}

// TestRetriesOfAReplicaFailingHalfItsCalls: one replica of three answers UNAVAILABLE to every
// other call. With retries the client sees none of those; with a retry budget of zero it sees
// them; and with every replica failing half its calls, retries stay within a 20 % budget. The
// first two balance round robin, so the failing replica takes its full third of the calls (P2C
// would steer most of them away from it).
func TestRetriesOfAReplicaFailingHalfItsCalls(t *testing.T) {
	const noEjection = "    accrual: {consecutiveFailures: 0}\n"
	run := func(t *testing.T, policy string, allFailing bool) (m *resilientMesh, calls []call, seen int64) {
		var counts [3]atomic.Int64
		m = newResilientMesh(t, 3, policy, func(i int, pod *netns.Pod) {
			ic := passThrough
			if i == 0 || allFailing {
				ic = halfFailing(&counts[i])
			}
			serveStockDataWith(t, pod, pod.Name, 0, ic)
		})
		for i := range counts {
			counts[i].Store(0) // the warm-up's calls
		}
		base := metricSum(t, m.client, "detour_retries_total", `reason="status"`)
		calls = startRateLoad(m.cc, 300, 2*time.Second, 5*time.Second).wait()
		retries := metricSum(t, m.client, "detour_retries_total", `reason="status"`) - base
		return m, calls, int64(retries)
	}
	t.Run("retried: the client sees no failure", func(t *testing.T) {
		_, calls, retries := run(t, "    retry: {on: [unavailable]}\n"+noEjection+roundRobin, false)
		failed, sample := failures(calls)
		t.Logf("%d calls, %d failed, %d retries", len(calls), failed, retries)
		if failed > 0 {
			t.Errorf("%d calls failed with retries configured: %v", failed, sample)
		}
		if retries == 0 {
			t.Error("no retry was counted: the failing replica was not exercised")
		}
	})
	t.Run("a budget of zero: the client sees the failures", func(t *testing.T) {
		m, calls, retries := run(t, "    retry: {on: [unavailable]}\n    budget: {ratio: 0, minPerSecond: 0}\n"+noEjection+roundRobin, false)
		failed, _ := failures(calls)
		exhausted := metricSum(t, m.client, "detour_retry_budget_exhausted_total")
		t.Logf("%d calls, %d failed, %d retries, %v refused by the budget", len(calls), failed, retries, exhausted)
		if failed == 0 || retries != 0 {
			t.Errorf("with no retry budget: %d calls failed and %d were retried; want failures and no retry", failed, retries)
		}
		if exhausted < float64(failed) {
			t.Errorf("budget exhaustion counted %v times for %d failures", exhausted, failed)
		}
	})
	t.Run("every replica failing: retries stay within a 20 % budget", func(t *testing.T) {
		_, calls, retries := run(t, "    retry: {on: [unavailable], attempts: 5}\n    budget: {ratio: 0.2, minPerSecond: 0}\n"+noEjection, true)
		failed, _ := failures(calls)
		t.Logf("%d calls, %d failed, %d retries (%.1f %%)", len(calls), failed, retries, 100*float64(retries)/float64(len(calls)))
		// The warm-up's few calls count in the budget's window too.
		if float64(retries) > 0.2*float64(len(calls)+30)+1 {
			t.Errorf("%d retries for %d calls: more than the 20 %% budget", retries, len(calls))
		}
		if float64(retries) < 0.15*float64(len(calls)) {
			t.Errorf("%d retries for %d calls with half of them failing: the budget was not used", retries, len(calls))
		}
		if failed == 0 {
			t.Error("no call failed although the budget allows fewer retries than there are failures")
		}
	})
}

// TestRequestTimeout: a route timeout of 200 ms on GetQuote, a replica that takes 2 s: the
// client gets DEADLINE_EXCEEDED after about 200 ms, and the server sees its call cancelled.
func TestRequestTimeout(t *testing.T) {
	cancelled := make(chan error, 16)
	policy := "    routes:\n      - {path: " + getQuote + ", timeout: 200ms}\n"
	var slow atomic.Bool
	m := newResilientMesh(t, 1, policy, func(i int, pod *netns.Pod) {
		serveStockDataWith(t, pod, pod.Name, 0, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if !slow.Load() {
				return h(ctx, req)
			}
			select {
			case <-time.After(2 * time.Second):
				cancelled <- nil
			case <-ctx.Done():
				cancelled <- ctx.Err()
			}
			return h(ctx, req)
		})
	})
	slow.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := stockpb.NewStockDataClient(m.cc).GetQuote(ctx, &stockpb.QuoteRequest{Symbol: "ACME"})
	took := time.Since(start)
	t.Logf("answered %v after %v", status.Code(err), took.Round(time.Millisecond))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call past its route's 200 ms timeout: %v, want DeadlineExceeded", err)
	}
	if took > time.Second {
		t.Errorf("the 200 ms timeout answered after %v", took)
	}
	select {
	case err := <-cancelled:
		if err == nil {
			t.Fatal("the server's call ran its 2 s: the cancellation did not reach it")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server's call never ended")
	}
	if n := metricSum(t, m.client, "detour_request_timeouts_total", `service="stockdata.stocks"`); n != 1 {
		t.Errorf("detour_request_timeouts_total = %v, want 1", n)
	}
}

// TestFlappingReplicaIsEjectedAndReadmitted: a replica answers UNAVAILABLE to everything for 4 s,
// then recovers. Failure accrual (3 failures in a row here) ejects it (the client sees nothing,
// as its calls are retried) and probes it back once it has recovered.
func TestFlappingReplicaIsEjectedAndReadmitted(t *testing.T) {
	var failing atomic.Bool
	policy := strings.Replace(retryAll, "consecutiveFailures: 5", "consecutiveFailures: 3", 1)
	m := newResilientMesh(t, 3, policy, func(i int, pod *netns.Pod) {
		ic := passThrough
		if i == 0 {
			ic = func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				if failing.Load() {
					return nil, status.Error(codes.Unavailable, "flapping")
				}
				return h(ctx, req)
			}
		}
		serveStockDataWith(t, pod, pod.Name, 0, ic)
	})
	victim := m.replicas[0]
	ep := netip.AddrPortFrom(victim.IPv4, 8080)
	l := startRateLoad(m.cc, 200, 9*time.Second, 5*time.Second)
	waitFor(t, 5*time.Second, "the load's first second", func() bool { return l.elapsed() >= time.Second })
	failing.Store(true)
	began := l.elapsed()
	waitFor(t, 5*time.Second, "the flapping replica's ejection", func() bool {
		state, _ := endpointState(t, m.client, ep)
		return state == "ejected" || state == "probing"
	})
	ejectedAfter := l.elapsed() - began
	waitFor(t, 5*time.Second, "4 s of failures", func() bool { return l.elapsed() >= began+4*time.Second })
	failing.Store(false)
	recovered := l.elapsed()
	calls := l.wait()
	failed, sample := failures(calls)
	back := time.Duration(-1)
	for _, c := range calls {
		if c.server == victim.Name && c.at > recovered {
			back = c.at - recovered
			break
		}
	}
	state, ejections := endpointState(t, m.client, ep)
	t.Logf("%d calls, %d failed; ejected %v after it began failing, readmitted %v after it recovered (%d ejections, now %s)",
		len(calls), failed, ejectedAfter.Round(time.Millisecond), back, ejections, state)
	if failed > 0 {
		t.Errorf("%d calls failed: %v", failed, sample)
	}
	if back < 0 {
		t.Error("the recovered replica got no call back")
	}
	if state != "up" {
		t.Errorf("the recovered replica is %q, want up", state)
	}
}

// resettingApp is an HTTP/2 (h2c) application in pod that reads each request to its end, counts
// it by method, and resets its connection (SO_LINGER 0) instead of answering.
func resettingApp(t *testing.T, pod *netns.Pod, seen *sync.Map) {
	t.Helper()
	serveTCP(t, pod, 8080, func(c net.Conn) {
		defer c.Close()
		pre := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, pre); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings()
		method := ""
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			end := false
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				method, end = f.PseudoValue("method"), f.StreamEnded()
			case *http2.DataFrame:
				end = f.StreamEnded()
			}
			if end {
				n, _ := seen.LoadOrStore(method, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				c.(*net.TCPConn).SetLinger(0)
				return
			}
		}
	})
}

// TestResetAfterTheRequestIsRetriedOnlyIfIdempotent: an application resets its connection once
// it has read a request. A POST is not retried (it may have been acted on), even with resets
// and 502 among the outcomes to retry; a PUT, idempotent, is.
func TestResetAfterTheRequestIsRetriedOnlyIfIdempotent(t *testing.T) {
	var seen sync.Map
	m := newResilientMeshOf(t, 1, "    retry: {on: [reset, \"502\"], attempts: 3, backoff: 5ms}\n", func(i int, pod *netns.Pod) {
		resettingApp(t, pod, &seen)
	}, false)
	tr := &http.Transport{DialContext: m.client.NS.DialContext, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true) // prior knowledge h2c, as a gRPC client speaks
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	count := func(method string) int64 {
		if n, ok := seen.Load(method); ok {
			return n.(*atomic.Int64).Load()
		}
		return 0
	}
	for _, tt := range []struct {
		method string
		want   int64
	}{{"POST", 1}, {"PUT", 3}} {
		req, _ := http.NewRequest(tt.method, "http://"+m.vip.String()+"/orders", strings.NewReader("one order"))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.method, err)
		}
		resp.Body.Close()
		t.Logf("%s: %d, the application saw it %d times", tt.method, resp.StatusCode, count(tt.method))
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: status %d, want 502", tt.method, resp.StatusCode)
		}
		if got := count(tt.method); got != tt.want {
			t.Errorf("%s reached the application %d times, want %d", tt.method, got, tt.want)
		}
	}
}

// TestSlowReplicaGetsLessTraffic: with mutual TLS and under steady load, a replica that takes
// 30 ms per call gets fewer calls than its fast peers.
func TestSlowReplicaGetsLessTraffic(t *testing.T) {
	m := newResilientMesh(t, 3, "", func(i int, pod *netns.Pod) {
		delay := time.Duration(0)
		if i == 0 {
			delay = 30 * time.Millisecond
		}
		serveStockData(t, pod, pod.Name, delay)
	})
	calls := startRateLoad(m.cc, 200, 3*time.Second, 5*time.Second).wait()
	counts := map[string]int{}
	for _, c := range calls {
		counts[c.server]++
	}
	slow := counts[m.replicas[0].Name]
	fast := min(counts[m.replicas[1].Name], counts[m.replicas[2].Name])
	t.Logf("calls per replica: %v", counts)
	if slow*2 > fast {
		t.Errorf("the slow replica served %d calls, its fast peers at least %d: want it under half", slow, fast)
	}
}

// TestStreamingCallIsNotRetriedAfterItsFirstMessage: a client stream whose replica fails it
// after its first message, the client still sending, is not sent again (its replica saw it),
// although the policy retries UNAVAILABLE and resets of every route.
func TestStreamingCallIsNotRetriedAfterItsFirstMessage(t *testing.T) {
	var streams atomic.Int64
	fail := grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		streams.Add(1)
		var tr stockpb.Trade
		if err := ss.RecvMsg(&tr); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "replica failing mid-stream")
	})
	m := newResilientMesh(t, 2, "    retry: {on: [unavailable, reset]}\n    routes:\n      - {path: /, idempotent: true}\n", func(i int, pod *netns.Pod) {
		serveStockDataOpts(t, pod, pod.Name, 0, fail)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := stockpb.NewStockDataClient(m.cc).RecordTrades(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&stockpb.Trade{Symbol: "ACME", Shares: 1}); err != nil {
		t.Fatal(err)
	}
	var sum stockpb.TradeSummary
	err = st.RecvMsg(&sum) // still sending: no CloseSend
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a client stream failed after its first message: %v, want the replica's UNAVAILABLE", err)
	}
	if n := streams.Load(); n != 1 {
		t.Fatalf("the stream reached replicas %d times, want once", n)
	}
}
