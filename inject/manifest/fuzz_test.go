package manifest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzTransform feeds arbitrary bytes to the YAML reader in every mode: it never panics, and
// whatever it accepts it writes so that a second pass changes nothing (injecting twice is
// injecting once) and uninject accepts it.
func FuzzTransform(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/in/*")
	for _, in := range inputs {
		b, _ := os.ReadFile(in)
		f.Add(b, uint8(0))
		f.Add(b, uint8(1))
	}
	f.Add([]byte("--- {kind: Pod, spec: {containers: []}}\n---\n--- |\n  x\n"), uint8(1))
	f.Add([]byte("kind: List\nitems: [{kind: List, items: [{kind: Pod}]}]\n"), uint8(0))
	f.Fuzz(func(t *testing.T, src []byte, m uint8) {
		mode := Mode(m % 3)
		out, _, err := Transform(src, "fuzz", Options{Mode: mode, Config: testConfig})
		if err != nil {
			return
		}
		again, _, err := Transform(out, "fuzz", Options{Mode: mode, Config: testConfig})
		if err != nil {
			t.Fatalf("the output of mode %d does not read back: %v\n%q", mode, err, out)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("mode %d twice differs from once:\n%q\n%q", mode, out, again)
		}
	})
}
