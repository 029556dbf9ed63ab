package mtls

import (
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestParsePolicy(t *testing.T) {
	cases := []struct {
		name               string
		mode, ports, allow string
		want               Policy
		err                string // in the error; "" : valid
	}{
		{name: "empty flags are permissive everywhere",
			want: Policy{Ports: map[uint16]Mode{}, Allow: map[uint16][]spiffeid.ID{}}},
		{name: "the full syntax", mode: "strict", ports: "8080=permissive, 9000=strict",
			allow: " 9000=spiffe://cluster.local/ns/web/sa/stockweb , spiffe://cluster.local/ns/x/sa/y;9100=spiffe://cluster.local/ns/stocks/sa/stockdata;",
			want: Policy{
				Default: Strict,
				Ports:   map[uint16]Mode{8080: Permissive, 9000: Strict},
				Allow: map[uint16][]spiffeid.ID{
					9000: {idStockweb, idOther},
					9100: {idStockdata},
				},
			}},
		{name: "a repeated identity is kept once", allow: "80=" + idStockweb.String() + "," + idStockweb.String(),
			want: Policy{Ports: map[uint16]Mode{}, Allow: map[uint16][]spiffeid.ID{80: {idStockweb}}}},
		{name: "an unknown mode", mode: "enforcing", err: `policy mode "enforcing": use permissive or strict`},
		{name: "a port policy without a mode", ports: "8080", err: "want PORT=permissive or PORT=strict"},
		{name: "port 0", ports: "0=strict", err: "want a number 1-65535"},
		{name: "a port beyond 65535", ports: "70000=strict", err: "want a number 1-65535"},
		{name: "a port given twice", ports: "80=strict,80=permissive", err: "port 80 given twice"},
		{name: "an allow-list port given twice", allow: "80=" + idStockweb.String() + ";80=" + idOther.String(), err: "port 80 given twice"},
		{name: "an allow-list without identities", allow: "80=", err: "lists no identity"},
		{name: "an identity that is no SPIFFE ID", allow: "80=https://cluster.local/ns/web", err: "is not a SPIFFE ID"},
		{name: "identities separated by the port separator", allow: "80=" + idStockweb.String() + ";" + idOther.String(), err: "want PORT=spiffe://"},
		{name: "a permissive port with an allow-list", ports: "80=permissive", allow: "80=" + idStockweb.String(), err: "port 80 is permissive but has an allow-list"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePolicy(tc.mode, tc.ports, tc.allow)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	p, err := ParsePolicy("permissive", "9000=strict", "8080="+idStockweb.String())
	if err != nil {
		t.Fatal(err)
	}
	strict, _ := ParsePolicy("strict", "80=permissive", "")
	web, other := idStockweb, idOther
	cases := []struct {
		name    string
		policy  Policy
		port    uint16
		peer    *spiffeid.ID
		allowed bool
		reason  string
	}{
		{"permissive accepts plaintext", p, 80, nil, true, "plaintext accepted"},
		{"permissive accepts any mTLS peer", p, 80, &other, true, "mTLS peer"},
		{"a strict port refuses plaintext", p, 9000, nil, false, "port 9000 is strict: plaintext refused"},
		{"a strict port accepts any mTLS peer", p, 9000, &other, true, "mTLS peer"},
		{"an allow-list admits its peer", p, 8080, &web, true, "allow-list"},
		{"an allow-list refuses another peer", p, 8080, &other, false, "spiffe://cluster.local/ns/x/sa/y may not call port 8080 (allowed: spiffe://cluster.local/ns/web/sa/stockweb)"},
		{"an allow-list refuses plaintext", p, 8080, nil, false, "port 8080 admits only spiffe://cluster.local/ns/web/sa/stockweb over mTLS: plaintext refused"},
		{"a strict default refuses plaintext", strict, 443, nil, false, "port 443 is strict"},
		{"a permissive port under a strict default accepts plaintext", strict, 80, nil, true, "plaintext accepted"},
		{"the zero Policy is permissive", Policy{}, 1, nil, true, "plaintext accepted"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			allowed, reason := tc.policy.Decide(tc.port, tc.peer)
			if allowed != tc.allowed || !strings.Contains(reason, tc.reason) {
				t.Errorf("Decide = %v %q, want %v and a reason saying %q", allowed, reason, tc.allowed, tc.reason)
			}
			peer := ""
			if tc.peer != nil {
				peer = tc.peer.String()
			}
			if a2, r2 := tc.policy.DecideString(tc.port, peer); a2 != allowed || r2 != reason {
				t.Errorf("DecideString = %v %q, Decide = %v %q", a2, r2, allowed, reason)
			}
		})
	}
}

func TestDecideAllowsWithoutAllocating(t *testing.T) {
	p, _ := ParsePolicy("strict", "", "8080="+idStockweb.String())
	peer := idStockweb.String()
	if n := testing.AllocsPerRun(100, func() {
		p.DecideString(8080, peer)
		p.DecideString(9000, peer)
	}); n != 0 {
		t.Errorf("%v allocations per allowed decision", n)
	}
}

func TestLongAllowListsAreAbbreviatedInReasons(t *testing.T) {
	var ids []string
	for _, ns := range []string{"a", "b", "c", "d", "e"} {
		ids = append(ids, "spiffe://cluster.local/ns/"+ns+"/sa/x")
	}
	p, err := ParsePolicy("", "", "80="+strings.Join(ids, ","))
	if err != nil {
		t.Fatal(err)
	}
	if _, reason := p.Decide(80, nil); !strings.HasSuffix(reason, "/ns/c/sa/x and 2 more over mTLS: plaintext refused") {
		t.Errorf("reason %q", reason)
	}
}

func TestFlagsRoundTrip(t *testing.T) {
	p, err := ParsePolicy("strict", "9000=strict,8080=permissive", "9100="+idStockdata.String()+";9000="+idStockweb.String()+","+idOther.String())
	if err != nil {
		t.Fatal(err)
	}
	mode, ports, allow := p.Flags()
	if mode != "strict" || ports != "8080=permissive,9000=strict" ||
		allow != "9000="+idStockweb.String()+","+idOther.String()+";9100="+idStockdata.String() {
		t.Errorf("Flags = %q %q %q", mode, ports, allow)
	}
	q, err := ParsePolicy(mode, ports, allow)
	if err != nil || !reflect.DeepEqual(p, q) {
		t.Errorf("round trip: %+v, %v; want %+v", q, err, p)
	}
}

func TestParseProbePathsRefusesBadInput(t *testing.T) {
	for _, s := range []string{"healthz", "/healthz", "0/healthz", "70000/x", "x/y"} {
		if _, err := ParseProbePaths(s); err == nil {
			t.Errorf("ParseProbePaths(%q) accepted it", s)
		}
	}
	got, err := ParseProbePaths(" 8080/a  8080/b 9090/grpc.health.v1.Health/Check ")
	if err != nil || len(got[8080]) != 2 || got[9090][0] != grpcHealthPath {
		t.Errorf("ParseProbePaths: %v %v", got, err)
	}
}

// TestDecideRequestLetsKubeletProbesThrough: on strict and allow-listed ports a plaintext
// request to a probe path (GET/HEAD, or POST for the gRPC health check) is allowed, and nothing
// else is: another path, another method, another port.
func TestDecideRequestLetsKubeletProbesThrough(t *testing.T) {
	probes, err := ParseProbePaths("8080/ready 8080/live 9090/grpc.health.v1.Health/Check")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParsePolicy("strict", "", "9090=spiffe://cluster.local/ns/web/sa/stockweb")
	if err != nil {
		t.Fatal(err)
	}
	p.Probes = probes
	for _, c := range []struct {
		port         uint16
		peer, method string
		path         string
		want         bool
	}{
		{8080, "", "GET", "/ready", true},
		{8080, "", "HEAD", "/live", true},
		{8080, "", "GET", "/ready?verbose=1", true},
		{8080, "", "GET", "/ready/../admin", false},
		{8080, "", "GET", "/readyz", false},
		{8080, "", "POST", "/ready", false},
		{8080, "", "GET", "/", false},
		{8081, "", "GET", "/ready", false},
		{9090, "", "POST", "/grpc.health.v1.Health/Check", true},
		{9090, "", "POST", "/stockpb.StockData/GetQuote", false},
		{9090, "spiffe://cluster.local/ns/web/sa/other", "POST", "/grpc.health.v1.Health/Check", false},
		{8080, "spiffe://cluster.local/ns/web/sa/other", "GET", "/anything", true},
	} {
		got, why := p.DecideRequest(c.port, c.peer, c.method, c.path)
		if got != c.want {
			t.Errorf("DecideRequest(%d, %q, %s %s) = %v (%s), want %v", c.port, c.peer, c.method, c.path, got, why, c.want)
		}
	}
}
