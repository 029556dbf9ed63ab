package discovery

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

const policyFile = `services:
  - name: stockdata.stocks
    addresses: ["198.19.0.10:80"]
    timeout: 2s
    retry:
      on: [unavailable, "503", reset]
      attempts: 4
      backoff: 10ms
    budget: {ratio: 0.5, minPerSecond: 0, window: 5s}
    accrual: {consecutiveFailures: 3, baseEjection: 500ms}
    routes:
      - path: /stocks.StockData/GetQuote
        method: POST
        timeout: 200ms
        idempotent: true
      - path: /stocks.StockData/
        retry: {on: [internal], attempts: 2}
`

func TestPolicyFromTheFile(t *testing.T) {
	snap, err := Parse("d.yaml", []byte(policyFile))
	if err != nil {
		t.Fatal(err)
	}
	got := snap.Services()[0].Policy
	want := &Policy{
		Timeout: 2 * time.Second,
		Retry:   &RetryPolicy{On: RetryUnavailable | Retry503 | RetryReset, Attempts: 4, Backoff: 10 * time.Millisecond, MaxBackoff: 250 * time.Millisecond},
		Budget:  Budget{Ratio: 0.5, MinPerSecond: 0, Window: 5 * time.Second},
		Accrual: Accrual{ConsecutiveFailures: 3, Window: 10 * time.Second, MinRequests: 20, BaseEjection: 500 * time.Millisecond, MaxEjection: 30 * time.Second},
		Routes: []RoutePolicy{
			{PathPrefix: "/stocks.StockData/GetQuote", Method: "POST", Timeout: 200 * time.Millisecond, Idempotent: true},
			{PathPrefix: "/stocks.StockData/", Retry: &RetryPolicy{On: RetryInternal, Attempts: 2, Backoff: 25 * time.Millisecond, MaxBackoff: 250 * time.Millisecond}},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("policy:\n got %+v\nwant %+v", got, want)
	}
	if r := got.Match("POST", "/stocks.StockData/GetQuote"); r == nil || !r.Idempotent {
		t.Errorf("GetQuote matched %+v", r)
	}
	if r := got.Match("POST", "/stocks.StockData/Watch"); r == nil || r.Retry == nil {
		t.Errorf("Watch matched %+v", r)
	}
	if r := got.Match("GET", "/other"); r != nil {
		t.Errorf("an unrelated path matched %+v", r)
	}
	// Through the controller's wire form and back, and through Format and Parse.
	back, err := PolicyFromProto(PolicyToProto(got), "policy")
	if err != nil || !reflect.DeepEqual(back, got) {
		t.Fatalf("proto round trip: %+v, %v", back, err)
	}
	again, err := Parse("f.yaml", Format(snap))
	if err != nil || !reflect.DeepEqual(again.Services()[0].Policy, got) {
		t.Fatalf("Format round trip: %v\n%s", err, Format(snap))
	}
	if snap.Services()[0].Policy == nil || (&Service{}).PolicyOf().Retry != nil {
		t.Fatal("a service without policy fields must take the default, which retries nothing")
	}
}

func TestBadPolicyValuesNameTheLine(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"    timeout: soon\n", `d.yaml:4: services[0].timeout: "soon" is not a duration`},
		{"    retry: {attempts: 1}\n", "d.yaml:4: services[0].retry.attempts: 1 is out of range (2..10"},
		{"    retry:\n      on: [sometimes]\n", `d.yaml:5: services[0].retry.on: unknown outcome "sometimes"`},
		{"    budget:\n      ratio: -1\n", "d.yaml:5: services[0].budget.ratio: -1 is out of range"},
		{"    accrual:\n      failureRate: 2\n", "d.yaml:5: services[0].accrual.failureRate: 2 is out of range"},
		{"    routes:\n      - path: stocks\n", `d.yaml:5: services[0].routes[0].path: "stocks" must start with /`},
		{"    routes:\n      - method: GET\n", `d.yaml:5: services[0].routes[0]: missing field "path"`},
		{"    routes:\n      - {path: /, idempotent: yes}\n", "d.yaml:5: services[0].routes[0].idempotent: want true or false"},
		{"    retry: {tries: 3}\n", `d.yaml:4: services[0].retry.tries: unknown field`},
	} {
		data := "services:\n  - name: a.b\n    addresses: [\"198.19.0.10:80\"]\n" + tt.yaml
		_, err := Parse("d.yaml", []byte(data))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want it to contain %q", tt.yaml, err, tt.want)
		}
	}
}

func TestPolicyFromAnnotations(t *testing.T) {
	p, err := ParseAnnotations(map[string]string{
		AnnotationRetryOn:          "unavailable, reset",
		AnnotationBudgetRatio:      "0",
		AnnotationTimeout:          "1s",
		AnnotationIdempotentRoutes: "POST /stocks.StockData/GetQuote",
		AnnotationRouteTimeouts:    "/stocks.StockData/Slow=200ms",
		"unrelated.io/x":           "y",
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Retry == nil || p.Retry.On != RetryUnavailable|RetryReset || p.Budget.Ratio != 0 || p.Timeout != time.Second || len(p.Routes) != 2 {
		t.Fatalf("%+v", p)
	}
	if r := p.Match("POST", "/stocks.StockData/GetQuote"); r == nil || !r.Idempotent {
		t.Fatalf("route %+v", r)
	}
	if _, err := ParseAnnotations(map[string]string{AnnotationPrefix + "retries": "3"}); err == nil || !strings.Contains(err.Error(), "config.detour.io/retries: unknown annotation") {
		t.Fatalf("unknown annotation: %v", err)
	}
	if _, err := ParseAnnotations(map[string]string{AnnotationRetryAttempts: "11"}); err == nil || !strings.Contains(err.Error(), "attempts") {
		t.Fatalf("bad attempts: %v", err)
	}
	if p, err := ParseAnnotations(map[string]string{"a": "b"}); p != nil || err != nil {
		t.Fatalf("no annotations of ours: %v %v", p, err)
	}
}

// FuzzPolicy feeds the policy parsers (file fields and annotations): they never panic, what the
// file parser accepts is in bounds and survives the controller's wire form.
func FuzzPolicy(f *testing.F) {
	f.Add(policyFile, "unavailable,reset", "0.2", "POST /x")
	f.Add("services: [{name: a.b, addresses: ['1.2.3.4:80'], retry: {}, routes: []}]", "5xx", "-1", "/a=1s")
	f.Add("services: [{name: a.b, addresses: ['1.2.3.4:80'], accrual: {maxEjection: 1ms}}]", "", "NaN", ",")
	f.Fuzz(func(t *testing.T, file, on, ratio, routes string) {
		if snap, err := Parse("fuzz.yaml", []byte(file)); err == nil {
			for _, s := range snap.Services() {
				if s.Policy == nil {
					continue
				}
				if errs := s.Policy.Validate(); len(errs) > 0 {
					t.Fatalf("accepted a policy out of bounds: %v", errs)
				}
				back, err := PolicyFromProto(PolicyToProto(s.Policy), "p")
				if err != nil {
					t.Fatalf("the wire form of an accepted policy is refused: %v", err)
				}
				if back.Retry != nil && back.Retry.On != s.Policy.Retry.On {
					t.Fatalf("retry outcomes changed on the wire")
				}
			}
		}
		p, err := ParseAnnotations(map[string]string{AnnotationRetryOn: on, AnnotationBudgetRatio: ratio, AnnotationIdempotentRoutes: routes, AnnotationRouteTimeouts: routes})
		if err == nil && p != nil && len(p.Validate()) > 0 {
			t.Fatalf("annotations accepted out of bounds: %+v", p)
		}
	})
}
