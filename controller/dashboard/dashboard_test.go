package dashboard

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourmesh/detour/controller/telemetry"
)

func server(t testing.TB) *httptest.Server {
	store := telemetry.NewStore(0, nil)
	store.Hello(telemetry.Pod{Namespace: "stocks", Name: "stockweb-0"}, "spiffe://cluster.local/ns/stocks/sa/stockweb", nil)
	store.Add(telemetry.Pod{Namespace: "stocks", Name: "stockweb-0"}, time.Now(), time.Second, []int{0, 14},
		[]telemetry.RouteCounts{{Authority: "stockdata.stocks", Endpoint: "198.18.0.3:8080", Requests: 10, Latency: []uint64{10, 0}}})
	reg := prometheus.NewRegistry()
	reg.MustRegister(store.Collector())
	srv := httptest.NewServer(Handler(store, reg, nil))
	t.Cleanup(srv.Close)
	return srv
}

func get(t testing.TB, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestEveryViewHasAURLAndItsDataIsJSONUnderAPI(t *testing.T) {
	srv := server(t)
	for _, path := range []string{"/", "/svc/stockdata.stocks", "/pod/stockweb-0", "/deploy/stockweb"} {
		if code, body := get(t, srv.URL+path); code != 200 || !strings.Contains(body, "/assets/app.js") {
			t.Errorf("GET %s: %d, want the page", path, code)
		}
	}
	for _, path := range []string{"/assets/app.js", "/assets/style.css"} {
		if code, _ := get(t, srv.URL+path); code != 200 {
			t.Errorf("GET %s: %d", path, code)
		}
	}
	code, body := get(t, srv.URL+"/api/stat?resource=svc")
	var st telemetry.Stat
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil || len(st.Rows) != 1 || st.Rows[0].Requests != 10 {
		t.Errorf("/api/stat?resource=svc: %d %s", code, body)
	}
	for _, path := range []string{"/api/graph", "/api/top", "/api/timeline?resource=svc/stockdata.stocks"} {
		if code, body := get(t, srv.URL+path); code != 200 || !json.Valid([]byte(body)) {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}
	if code, body := get(t, srv.URL+"/metrics"); code != 200 || !strings.Contains(body, "detour_telemetry_series 1") {
		t.Errorf("/metrics: %d %s", code, body)
	}
}

func TestBadQueriesSayWhatIsWrong(t *testing.T) {
	srv := server(t)
	for query, want := range map[string]string{
		"/api/stat?resource=nodes":                 `resource \"nodes\": want svc, pod or deploy`,
		"/api/stat?resource=svc&window=1h":         `window \"1h\": want a duration from 10s to 10m0s`,
		"/api/stat?resource=pod&from=x":            `from: resource \"x\"`,
		"/api/timeline?resource=svc":               `name one`,
		"/api/top?limit=-1":                        `limit \"-1\"`,
		"/api/stat?resource=svc&to=pod/stockweb-0": `services are destinations`,
	} {
		code, body := get(t, srv.URL+query)
		if code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("GET %s: %d %s, want 400 saying %s", query, code, body, want)
		}
	}
}

// FuzzAPI sends arbitrary query strings to every /api/ endpoint: each answers JSON, 200 or
// 400, and never panics.
func FuzzAPI(f *testing.F) {
	for _, seed := range []string{"resource=svc", "resource=pod/x&from=deploy/y&to=svc/z&window=30s", "resource=svc/", "window=%zz", "limit=0", "resource=deploy/a/b"} {
		f.Add(seed)
	}
	store := telemetry.NewStore(0, nil)
	h := Handler(store, nil, nil)
	f.Fuzz(func(t *testing.T, query string) {
		if _, err := url.ParseQuery(query); err != nil {
			return
		}
		for _, path := range []string{"/api/stat", "/api/top", "/api/graph", "/api/timeline"} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, path, nil)
			req.URL.RawQuery = query
			h.ServeHTTP(rec, req)
			if rec.Code != 200 && rec.Code != 400 {
				t.Fatalf("%s?%s: %d", path, query, rec.Code)
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s?%s: not JSON: %s", path, query, rec.Body)
			}
		}
	})
}
