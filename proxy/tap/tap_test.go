package tap

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func event(service, path string) Event {
	return Event{Time: time.Now(), Direction: "outbound", Protocol: "http2", Service: service, Authority: service + ":80",
		Method: "POST", Path: path, GRPC: true, Status: 200, GRPCStatus: 0, Latency: 1500 * time.Microsecond,
		Endpoint: netip.MustParseAddrPort("198.18.0.3:8080"), Dst: netip.MustParseAddrPort("198.19.0.10:80")}
}

func TestNobodyWatchingIsInactive(t *testing.T) {
	var h Hub
	if h.Active() {
		t.Fatal("a hub nobody watches is active")
	}
	h.Publish(event("a", "/x")) // must not panic or block
	w := h.Watch(Filter{})
	if !h.Active() {
		t.Fatal("a watched hub is inactive")
	}
	w.Close()
	w.Close() // twice is fine
	if h.Active() {
		t.Fatal("the hub stays active after its only watcher closed")
	}
}

func TestWatchersGetTheEventsTheirFilterSelects(t *testing.T) {
	var h Hub
	all := h.Watch(Filter{})
	byName := h.Watch(Filter{Service: "stockdata.stocks"})
	byDst := h.Watch(Filter{Service: "198.19.0.10:80"})
	defer all.Close()
	defer byName.Close()
	defer byDst.Close()

	h.Publish(event("stockdata.stocks", "/a"))
	other := event("web.stocks", "/b")
	other.Dst = netip.MustParseAddrPort("198.19.0.11:80")
	h.Publish(other)
	inbound := Event{Direction: "inbound", Authority: "stockdata.stocks:80", Path: "/c", GRPCStatus: -1}
	h.Publish(inbound)

	got := func(w *Watcher) []string {
		var paths []string
		for {
			select {
			case e := <-w.C:
				paths = append(paths, e.Path)
			default:
				return paths
			}
		}
	}
	for _, tt := range []struct {
		name string
		w    *Watcher
		want string
	}{
		{"no filter", all, "/a /b /c"},
		{"service name or authority host", byName, "/a /c"},
		{"original destination", byDst, "/a"},
	} {
		if g := strings.Join(got(tt.w), " "); g != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, g, tt.want)
		}
	}
}

func TestASlowWatcherLosesEventsAndNeverBlocksPublish(t *testing.T) {
	var h Hub
	slow := h.Watch(Filter{})
	defer slow.Close()
	fast := h.Watch(Filter{Service: "other"})
	defer fast.Close()
	const extra = 100
	for range Buffer + extra {
		h.Publish(event("a", "/x")) // returns even though nobody reads slow
	}
	if d := slow.Dropped(); d != extra {
		t.Fatalf("dropped %d, want %d", d, extra)
	}
	if d := fast.Dropped(); d != 0 {
		t.Fatalf("a watcher whose filter selects nothing dropped %d", d)
	}
	if n := len(slow.C); n != Buffer {
		t.Fatalf("%d events buffered, want the buffer's %d", n, Buffer)
	}
}

func TestWatchersAreBounded(t *testing.T) {
	var h Hub
	var ws []*Watcher
	for range MaxWatchers {
		w := h.Watch(Filter{})
		if w == nil {
			t.Fatal("a watcher below the limit was refused")
		}
		ws = append(ws, w)
	}
	if h.Watch(Filter{}) != nil {
		t.Fatal("a watcher beyond MaxWatchers was accepted")
	}
	ws[0].Close()
	if w := h.Watch(Filter{}); w == nil {
		t.Fatal("a closed watcher's place was not freed")
	}
}

func TestLongPathsAreCut(t *testing.T) {
	var h Hub
	w := h.Watch(Filter{})
	defer w.Close()
	h.Publish(event("a", "/"+strings.Repeat("p", 10_000)))
	if e := <-w.C; len(e.Path) != MaxPath {
		t.Fatalf("path of %d bytes, want %d", len(e.Path), MaxPath)
	}
}

// readLines reads the stream's lines until it ends.
func readLines(t *testing.T, resp *http.Response, each func(Line)) {
	t.Helper()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var l Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		each(l)
	}
}

func TestHandlerStreamsUntilTheLimit(t *testing.T) {
	var h Hub
	srv := httptest.NewServer(h.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "?service=stockdata.stocks&limit=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("content type %q", ct)
	}
	var kinds []string
	readLines(t, resp, func(l Line) {
		kinds = append(kinds, l.Kind)
		switch l.Kind {
		case "start":
			// The watch is in place once the start line is out: publish now.
			h.Publish(event("web.stocks", "/skipped"))
			h.Publish(event("stockdata.stocks", "/stocks.StockData/Quote"))
			h.Publish(event("stockdata.stocks", "/stocks.StockData/Quote"))
			h.Publish(event("stockdata.stocks", "/after-the-limit"))
		case "request":
			if l.GRPCMethod != "stocks.StockData/Quote" || l.GRPCStatus == nil || *l.GRPCStatus != 0 ||
				l.Endpoint != "198.18.0.3:8080" || l.LatencyMS != 1.5 || l.Dst != "198.19.0.10:80" {
				t.Errorf("request line %+v", l)
			}
		case "end":
			if l.Reason != "limit" || l.Events != 2 {
				t.Errorf("end line %+v", l)
			}
		}
	})
	if got := strings.Join(kinds, " "); got != "start request request end" {
		t.Fatalf("lines %q", got)
	}
	if h.Active() {
		t.Fatal("the hub stays active after the stream ended")
	}
}

func TestHandlerEndsAfterTheDuration(t *testing.T) {
	var h Hub
	srv := httptest.NewServer(h.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "?duration=50ms")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var last Line
	readLines(t, resp, func(l Line) { last = l })
	if last.Kind != "end" || last.Reason != "duration" {
		t.Fatalf("last line %+v, want the end of the duration", last)
	}
}

func TestHandlerRefusesBadParameters(t *testing.T) {
	var h Hub
	for _, q := range []string{"limit=-1", "limit=ten", "duration=forever"} {
		rec := httptest.NewRecorder()
		h.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/tap?"+q, nil))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("?%s: status %d, want 400", q, rec.Code)
		}
	}
	if h.Active() {
		t.Fatal("a refused request left a watcher")
	}
}

// BenchmarkIdle is what every request pays while nobody taps.
func BenchmarkIdle(b *testing.B) {
	var h Hub
	n := 0
	for b.Loop() {
		if h.Active() {
			n++
		}
	}
	if n != 0 {
		b.Fatal("active")
	}
}

// BenchmarkPublish is what a request pays while one watcher taps (and drains) it.
func BenchmarkPublish(b *testing.B) {
	var h Hub
	w := h.Watch(Filter{})
	defer w.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-w.C:
			case <-stop:
				return
			}
		}
	}()
	e := event("a", "/stocks.StockData/Quote")
	for b.Loop() {
		h.Publish(e)
	}
}
