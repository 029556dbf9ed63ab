package mtls

import (
	"reflect"
	"testing"
)

// FuzzParsePolicy feeds arbitrary flag values to ParsePolicy: it never panics, a policy it
// accepts is valid, prints back through Flags to itself, and Decide answers on any port.
func FuzzParsePolicy(f *testing.F) {
	f.Add("strict", "8080=permissive,9000=strict", "9000=spiffe://cluster.local/ns/web/sa/stockweb,spiffe://cluster.local/ns/x/sa/y;9100=spiffe://cluster.local/ns/stocks/sa/stockdata", uint16(9000), "spiffe://cluster.local/ns/x/sa/y")
	f.Add("", "", "", uint16(80), "")
	f.Add("permissive", "80=strict,", ";;80=spiffe://a/b", uint16(80), "spiffe://a/b")
	f.Add(" strict ", "1=strict , 65535=permissive", "65535=spiffe://td/p", uint16(65535), "")
	f.Add("strict", "80=x", "80=spiffe://UPPER/x", uint16(1), "x")
	f.Fuzz(func(t *testing.T, mode, ports, allow string, port uint16, peer string) {
		p, err := ParsePolicy(mode, ports, allow)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("ParsePolicy returned an invalid policy: %v", err)
		}
		m, ps, as := p.Flags()
		q, err := ParsePolicy(m, ps, as)
		if err != nil {
			t.Fatalf("Flags %q %q %q do not parse: %v", m, ps, as, err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip changed the policy: %+v -> %q %q %q -> %+v", p, m, ps, as, q)
		}
		allowed, reason := p.DecideString(port, peer)
		if reason == "" {
			t.Fatal("a decision without a reason")
		}
		if peer == "" {
			if allowed && (p.Allow[port] != nil || p.modeOf(port) == Strict) {
				t.Fatalf("plaintext allowed on port %d of %+v", port, p)
			}
		}
	})
}
