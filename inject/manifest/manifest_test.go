package manifest

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/detourmesh/detour/inject"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var testConfig = inject.Config{TrustAnchorPEM: "-----BEGIN CERTIFICATE-----\nTEST-ANCHOR\n-----END CERTIFICATE-----\n"}

var modes = map[string]Mode{"annotate": Annotate, "manual": Manual}

// TestTransformGolden: every input under testdata/in, injected both ways; the output and the
// report are golden files (go test ./inject/manifest -update rewrites them).
func TestTransformGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/in/*")
	if len(inputs) < 4 {
		t.Fatalf("inputs: %v", inputs)
	}
	for _, in := range inputs {
		for mname, mode := range modes {
			t.Run(filepath.Base(in)+"/"+mname, func(t *testing.T) {
				src, err := os.ReadFile(in)
				if err != nil {
					t.Fatal(err)
				}
				out, changes, err := Transform(src, in, Options{Mode: mode, Config: testConfig})
				if err != nil {
					t.Fatal(err)
				}
				var report strings.Builder
				for _, c := range changes {
					report.WriteString("# " + c.String() + "\n")
				}
				got := append([]byte(report.String()), out...)
				golden := filepath.Join("testdata", filepath.Base(in)+"."+mname+".golden")
				if *update {
					os.WriteFile(golden, got, 0o644)
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (go test -update)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("output differs from %s:\n%s", golden, got)
				}
				mustParse(t, out)

				// Twice is once.
				again, _, err := Transform(out, in, Options{Mode: mode, Config: testConfig})
				if err != nil || !bytes.Equal(again, out) {
					t.Errorf("injecting twice differs from once (%v):\n%s", err, again)
				}
				// Uninject gives back the input as yaml.v3 writes it.
				back, _, err := Transform(out, in, Options{Mode: Uninject})
				if err != nil {
					t.Fatal(err)
				}
				if !sameYAML(t, back, src) {
					t.Errorf("uninject did not give back the input:\n%s", back)
				}
			})
		}
	}
}

// TestUnknownKindsAreByteIdentical: a file with nothing to inject comes back unchanged, byte for
// byte, comments, odd spacing and the document end marker included.
func TestUnknownKindsAreByteIdentical(t *testing.T) {
	src, _ := os.ReadFile("testdata/in/other.yaml")
	for _, mode := range []Mode{Annotate, Manual, Uninject} {
		out, changes, err := Transform(src, "other.yaml", Options{Mode: mode, Config: testConfig})
		if err != nil || !bytes.Equal(out, src) || len(changes) != 0 {
			t.Errorf("mode %d: %v, %d changes:\n%s", mode, err, len(changes), out)
		}
	}
	// The Widget document of workloads.yaml survives beside documents that change.
	src, _ = os.ReadFile("testdata/in/workloads.yaml")
	out, _, err := Transform(src, "workloads.yaml", Options{Mode: Manual, Config: testConfig})
	if err != nil {
		t.Fatal(err)
	}
	widget := src[bytes.Index(src, []byte("# a kind Detour does not know")):]
	if !bytes.HasSuffix(out, widget) {
		t.Errorf("the unknown kind's document changed:\n%s", out)
	}
}

func TestCommentsAreKept(t *testing.T) {
	src, _ := os.ReadFile("testdata/in/stockkube.yaml")
	out, _, err := Transform(src, "stockkube.yaml", Options{Mode: Manual, Config: testConfig})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"# StockKube, as a user writes it.", "# the Service selects this"} {
		if !bytes.Contains(out, []byte(c)) {
			t.Errorf("comment %q lost", c)
		}
	}
}

func TestTransformErrorsNameTheDocument(t *testing.T) {
	_, _, err := Transform([]byte("kind: Pod\n---\nkind: [unclosed\n"), "bad.yaml", Options{})
	if err == nil || !strings.Contains(err.Error(), "bad.yaml: document 2") {
		t.Errorf("error %v, want one naming bad.yaml document 2", err)
	}
	_, _, err = Transform([]byte("kind: Pod\nmetadata: {name: p, annotations: {config.detour.io/sidecar: maybe}}\nspec: {containers: [{name: a}]}\n"), "p.yaml", Options{Mode: Manual, Config: testConfig})
	if err == nil || !strings.Contains(err.Error(), inject.AnnotationSidecar) {
		t.Errorf("error %v, want one naming the annotation", err)
	}
}

func mustParse(t *testing.T, b []byte) {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var v any
		if err := dec.Decode(&v); err != nil {
			if err.Error() == "EOF" {
				return
			}
			t.Fatalf("output is not YAML: %v\n%s", err, b)
		}
	}
}

// sameYAML compares two streams document by document as data.
func sameYAML(t *testing.T, a, b []byte) bool {
	t.Helper()
	da, db := decodeAll(t, a), decodeAll(t, b)
	if len(da) != len(db) {
		return false
	}
	for i := range da {
		x, _ := yaml.Marshal(da[i])
		y, _ := yaml.Marshal(db[i])
		if !bytes.Equal(x, y) {
			t.Logf("document %d:\n%s\nvs\n%s", i+1, x, y)
			return false
		}
	}
	return true
}

func decodeAll(t *testing.T, b []byte) []any {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []any
	for {
		var v any
		if err := dec.Decode(&v); err != nil {
			return out
		}
		if v != nil {
			out = append(out, v)
		}
	}
}
