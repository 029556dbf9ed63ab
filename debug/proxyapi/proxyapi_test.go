package proxyapi

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestEndpointFieldsOfANewerProxyAreKept: /debug/endpoints will grow (endpoint states,
// ejections); what this client does not know is kept and written back, never dropped.
func TestEndpointFieldsOfANewerProxyAreKept(t *testing.T) {
	in := `{"address":"198.18.0.3:8080","weight":1,"in_flight":2,"rtt_ms":1.5,"sampled":true,"state":"ejected","consecutive_failures":5}`
	var e Endpoint
	if err := json.Unmarshal([]byte(in), &e); err != nil {
		t.Fatal(err)
	}
	if e.Address != "198.18.0.3:8080" || e.InFlight != 2 || !e.Sampled || len(e.Other) != 2 || string(e.Other["state"]) != `"ejected"` {
		t.Fatalf("decoded %+v", e)
	}
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"state":"ejected"`, `"consecutive_failures":5`, `"in_flight":2`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("written back without %s: %s", want, out)
		}
	}
	if strings.Contains(string(out), "Other") {
		t.Errorf("the Go field leaked into the document: %s", out)
	}
}
