package discovery

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it returns is located (a file
// name, and a line for every problem found past the YAML scanner), and that whatever it
// accepts survives Format and Parse unchanged.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("testdata/design.yaml"); err == nil {
		f.Add(data)
	}
	for _, s := range []string{
		fileV1, fileBad, "services: []", "",
		"trustDomain: example.org\nservices: [{name: a.b, addresses: ['1.2.3.4:80', 'A.B:81', '[::1]:2'], endpoints: [{address: '10.0.0.1:1', identity: 'spiffe://example.org/w', weight: 0x10, zone: z}]}]",
		"services:\n  - name: a.b\n    addresses: [\"198.19.0.10:80\"]\n  - name: c.d\n    addresses: [\"198.19.0.10:80\"]\n",
		"services: [{name: a.b, addresses: ['1.2.3.4:80'], endpoints: [{address: '10.0.0.1:1', zone: z, forZones: [z, y]}, {address: '10.0.0.2:1', forZones: [z, z]}]}]",
		"a: &x [*x]\n",
		"services: [{<<: {name: a}}]",
		"services:\n- name: a.b\n  addresses: ['[::ffff:1.2.3.4]:80']\n  endpoints:\n  - address: '[::ffff:10.0.0.1]:8080'\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %T is not a non-empty ErrorList: %v", err, err)
			}
			for _, e := range list {
				if e.File != "fuzz.yaml" {
					t.Errorf("error does not name the file: %v", e)
				}
				if e.Field != "" && e.Line <= 0 {
					t.Errorf("error about a field has no line: %v", e)
				}
			}
			return
		}
		for _, svc := range s.Services() {
			for _, a := range svc.Addresses {
				if got, ok := s.Lookup(a); !ok || got != svc {
					t.Errorf("Lookup(%v) does not find service %q", a, svc.Name)
				}
			}
			for _, a := range svc.Authorities {
				if got, ok := s.LookupAuthority(a); !ok || got != svc {
					t.Errorf("LookupAuthority(%q) does not find service %q", a, svc.Name)
				}
			}
		}
		out := Format(s)
		s2, err := Parse("formatted.yaml", out)
		if err != nil {
			t.Fatalf("Parse(Format(s)) failed: %v\ninput:\n%s\nformatted:\n%s", err, data, out)
		}
		if s.TrustDomain() != s2.TrustDomain() || !reflect.DeepEqual(s.Services(), s2.Services()) {
			t.Fatalf("round trip changed the snapshot\ninput:\n%s\nformatted:\n%s", data, out)
		}
		if out2 := Format(s2); !bytes.Equal(out, out2) {
			t.Fatalf("Format is not stable:\n%s\nthen:\n%s", out, out2)
		}
	})
}
