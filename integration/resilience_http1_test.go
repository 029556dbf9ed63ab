package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourmesh/detour/netns"
)

// The resilience tests over HTTP/1.1: the same meshed topology (mutual TLS between the proxies),
// HTTP/1.1 applications and an HTTP/1.1 client, and the same policy as for HTTP/2.

// serveHTTP1Replica runs an HTTP/1.1 server with h on port 8080 of pod; closing the returned
// server is the replica dying: its listeners and every connection, in flight or idle, close.
func serveHTTP1Replica(t testing.TB, pod *netns.Pod, h http.HandlerFunc) *http.Server {
	t.Helper()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	for _, ln := range listenAll(t, pod, 8080) {
		go srv.Serve(ln)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// h1Client is an HTTP/1.1 keep-alive client in m's client pod.
func (m *resilientMesh) h1Client(t testing.TB) *http.Client {
	tr := &http.Transport{DialContext: m.client.NS.DialContext, MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// h1Get is one GET of path at the VIP: its status, or an error.
func (m *resilientMesh) h1Get(cl *http.Client, path string) (int, string, error) {
	resp, err := cl.Get("http://" + m.vip.String() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitEveryReplica waits until every one of n replicas answered a GET through the mesh.
func (m *resilientMesh) waitEveryReplica(t testing.TB, cl *http.Client, n int) {
	seen := map[string]bool{}
	waitFor(t, 20*time.Second, "every replica to answer through the mesh", func() bool {
		if code, body, err := m.h1Get(cl, "/"); err == nil && code == 200 {
			seen[body] = true
		}
		return len(seen) == n
	})
}

// h1Load sends GETs from workers goroutines for d (at most limit in all) and returns how many
// were sent and a sample of the failures (a status other than 200, or an error).
func (m *resilientMesh) h1Load(cl *http.Client, workers int, d time.Duration, limit int64, during func(start time.Time)) (sent int64, failed []string) {
	var n atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d && n.Add(1) <= limit {
				code, body, err := m.h1Get(cl, "/")
				if err != nil || code != 200 {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("%d %q %v", code, strings.TrimSpace(body), err))
					mu.Unlock()
				}
			}
		}()
	}
	if during != nil {
		during(start)
	}
	wg.Wait()
	return min(n.Load(), limit), failed
}

// h1RetryPolicy retries 503 and resets (GET is idempotent), round robin so that every replica
// keeps its share and the one that dies has requests in flight.
const h1RetryPolicy = "    retry: {on: [\"503\", reset], attempts: 3, backoff: 5ms}\n" + roundRobin

// h1KillUnderLoad runs 5 s of GETs from 4 workers over three HTTP/1.1 replicas and, 1.5 s in,
// with a request in flight in the first, closes its server (every connection, requests in
// flight included). It returns the GETs sent, a sample of the failures and the client proxy.
func h1KillUnderLoad(tb testing.TB, policy string) (sent int64, failed []string, client *meshPod) {
	srvs := make([]*http.Server, 3)
	var inFlight atomic.Int64 // in the victim
	m := newResilientMeshOf(tb, 3, policy, func(i int, pod *netns.Pod) {
		srvs[i] = serveHTTP1Replica(tb, pod, func(w http.ResponseWriter, r *http.Request) {
			if i == 0 {
				inFlight.Add(1)
				defer inFlight.Add(-1)
			}
			time.Sleep(5 * time.Millisecond) // so that requests are in flight when it dies
			io.WriteString(w, pod.Name)
		})
	}, false)
	cl := m.h1Client(tb)
	m.waitEveryReplica(tb, cl, 3)
	sent, failed = m.h1Load(cl, 4, 5*time.Second, 20000, func(start time.Time) {
		waitFor(tb, 5*time.Second, "1.5 s of load and a request in the victim", func() bool {
			return time.Since(start) >= 1500*time.Millisecond && inFlight.Load() > 0
		})
		srvs[0].Close() // with the request in flight: its connection closes under it
	})
	return sent, failed, m.client
}

// TestHTTP1ReplicaKilledUnderLoad: one of three HTTP/1.1 replicas dies 1.5 s into 5 s of GETs.
// No GET fails: those its proxy cannot deliver come back marked refused and go elsewhere, those
// in flight are retried as resets (GET is idempotent).
func TestHTTP1ReplicaKilledUnderLoad(t *testing.T) {
	sent, failed, client := h1KillUnderLoad(t, h1RetryPolicy)
	t.Logf("%d GETs, %d failed; client proxy retries: refused %v, reset %v, dial_failed %v", sent, len(failed),
		metricSum(t, client, "detour_retries_total", `reason="refused"`), metricSum(t, client, "detour_retries_total", `reason="reset"`),
		metricSum(t, client, "detour_retries_total", `reason="dial_failed"`))
	if len(failed) > 0 {
		t.Errorf("%d of %d GETs failed, want none: %v", len(failed), sent, failed[:min(len(failed), 5)])
	}
	if sent < 200 {
		t.Errorf("only %d GETs in 5 s: the load did not run", sent)
	}
}

// BenchmarkFailoverHTTP1 is the HTTP/1.1 kill above as figures (make bench): GETs failed of
// those sent, with the retry policy and with none (only never-reached requests rerouted).
func BenchmarkFailoverHTTP1(b *testing.B) {
	for _, run := range []struct{ name, policy string }{{"retries", h1RetryPolicy}, {"defaults", roundRobin}} {
		b.Run(run.name, func(b *testing.B) {
			for b.Loop() {
				sent, failed, _ := h1KillUnderLoad(b, run.policy)
				b.ReportMetric(float64(len(failed)), "failed-GETs")
				b.ReportMetric(float64(sent), "GETs")
			}
		})
	}
}

// TestHTTP1RetriesOfAReplicaFailingHalfItsCalls: one of three replicas answers 503 to every
// other request. With 503 retried the client sees none; with a retry budget of zero it sees them.
func TestHTTP1RetriesOfAReplicaFailingHalfItsCalls(t *testing.T) {
	const noEjection = "    accrual: {consecutiveFailures: 0}\n"
	run := func(t *testing.T, policy string) (m *resilientMesh, sent int64, failed []string, retries float64) {
		var calls atomic.Int64
		m = newResilientMeshOf(t, 3, policy+noEjection+roundRobin, func(i int, pod *netns.Pod) {
			serveHTTP1Replica(t, pod, func(w http.ResponseWriter, r *http.Request) {
				if i == 0 && calls.Add(1)%2 == 0 {
					http.Error(w, "overloaded", http.StatusServiceUnavailable)
					return
				}
				io.WriteString(w, pod.Name)
			})
		}, false)
		cl := m.h1Client(t)
		m.waitEveryReplica(t, cl, 3)
		base := metricSum(t, m.client, "detour_retries_total", `reason="status"`)
		sent, failed = m.h1Load(cl, 2, 2*time.Second, 600, nil)
		return m, sent, failed, metricSum(t, m.client, "detour_retries_total", `reason="status"`) - base
	}
	t.Run("retried: the client sees no failure", func(t *testing.T) {
		_, sent, failed, retries := run(t, "    retry: {on: [\"503\"]}\n")
		t.Logf("%d GETs, %d failed, %v retries", sent, len(failed), retries)
		if len(failed) > 0 {
			t.Errorf("%d GETs failed with retries configured: %v", len(failed), failed[:min(len(failed), 5)])
		}
		if retries == 0 {
			t.Error("no retry was counted: the failing replica was not exercised")
		}
	})
	t.Run("a budget of zero: the client sees the failures", func(t *testing.T) {
		m, sent, failed, retries := run(t, "    retry: {on: [\"503\"]}\n    budget: {ratio: 0, minPerSecond: 0}\n")
		exhausted := metricSum(t, m.client, "detour_retry_budget_exhausted_total")
		t.Logf("%d GETs, %d failed, %v retries, %v refused by the budget", sent, len(failed), retries, exhausted)
		if len(failed) == 0 || retries != 0 {
			t.Errorf("with no retry budget: %d GETs failed and %v were retried; want failures and no retry", len(failed), retries)
		}
		if exhausted < float64(len(failed)) {
			t.Errorf("budget exhaustion counted %v times for %d failures", exhausted, len(failed))
		}
	})
}

// TestHTTP1ResetAfterTheRequestIsRetriedOnlyIfIdempotent: an HTTP/1.1 application resets its
// connection once it has read a request. A POST is not retried, even with resets and 502 among
// the outcomes to retry; a PUT, idempotent, is (3 attempts).
func TestHTTP1ResetAfterTheRequestIsRetriedOnlyIfIdempotent(t *testing.T) {
	var posts, puts atomic.Int64
	m := newResilientMeshOf(t, 1, "    retry: {on: [reset, \"502\"], attempts: 3, backoff: 5ms}\n", func(i int, pod *netns.Pod) {
		serveHTTP1Replica(t, pod, func(w http.ResponseWriter, r *http.Request) {
			io.ReadAll(r.Body)
			switch r.Method {
			case "POST":
				posts.Add(1)
			case "PUT":
				puts.Add(1)
			default:
				io.WriteString(w, pod.Name)
				return
			}
			c, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		})
	}, false)
	cl := m.h1Client(t)
	m.waitEveryReplica(t, cl, 1)
	for _, tt := range []struct {
		method string
		n      *atomic.Int64
		want   int64
	}{{"POST", &posts, 1}, {"PUT", &puts, 3}} {
		req, _ := http.NewRequest(tt.method, "http://"+m.vip.String()+"/orders", strings.NewReader("one order"))
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.method, err)
		}
		resp.Body.Close()
		t.Logf("%s: %d, the application saw it %d times", tt.method, resp.StatusCode, tt.n.Load())
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: status %d, want 502", tt.method, resp.StatusCode)
		}
		if got := tt.n.Load(); got != tt.want {
			t.Errorf("%s reached the application %d times, want %d", tt.method, got, tt.want)
		}
	}
}

// TestHTTP1RequestTimeout: a route timeout of 200 ms on /slow, whose handler takes 2 s: the
// client gets 504 after about 200 ms, the application sees its request cancelled (its
// connection closed), and the timeout is counted.
func TestHTTP1RequestTimeout(t *testing.T) {
	cancelled := make(chan error, 16)
	m := newResilientMeshOf(t, 1, "    routes:\n      - {path: /slow, timeout: 200ms}\n", func(i int, pod *netns.Pod) {
		serveHTTP1Replica(t, pod, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/slow" {
				io.WriteString(w, pod.Name)
				return
			}
			select {
			case <-time.After(2 * time.Second):
				cancelled <- nil
			case <-r.Context().Done():
				cancelled <- r.Context().Err()
			}
		})
	}, false)
	cl := m.h1Client(t)
	m.waitEveryReplica(t, cl, 1)
	start := time.Now()
	code, _, err := m.h1Get(cl, "/slow")
	took := time.Since(start)
	t.Logf("answered %d after %v", code, took.Round(time.Millisecond))
	if err != nil || code != http.StatusGatewayTimeout {
		t.Fatalf("a request past its route's 200 ms timeout: %d %v, want 504", code, err)
	}
	if took < 200*time.Millisecond || took > time.Second {
		t.Errorf("the 200 ms timeout answered after %v", took)
	}
	select {
	case err := <-cancelled:
		if err == nil {
			t.Fatal("the handler ran its 2 s: the cancellation did not reach it")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler never ended")
	}
	// Counted as the exchange ends, just after the 504 went out.
	timeouts := func() float64 {
		return metricSum(t, m.client, "detour_request_timeouts_total", `service="stockdata.stocks"`)
	}
	waitFor(t, 2*time.Second, "the timeout to be counted", func() bool { return timeouts() >= 1 })
	if n := timeouts(); n != 1 {
		t.Errorf("detour_request_timeouts_total = %v, want 1", n)
	}
}
