package inject

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/detourmesh/detour/proxy/mtls"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// testConfig is the installation every golden file assumes.
var testConfig = Config{
	Image:          "detour:dev",
	TrustDomain:    "cluster.local",
	ControllerAddr: "detour-controller.detour.svc:7086",
	TrustAnchorPEM: "-----BEGIN CERTIFICATE-----\nTEST-ANCHOR\n-----END CERTIFICATE-----\n",
}

// TestPatchGolden: the patch for the pod each workload kind makes (the webhook sees Pods), one
// golden file per case (go test ./inject -update rewrites them). Each patch must also apply to its
// pod as RFC 6902 says, and the patched pod must count as injected.
func TestPatchGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/pods/*.json")
	if err != nil || len(files) < 8 {
		t.Fatalf("want the pod cases in testdata/pods: %v %v", files, err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			ops, skip, err := Patch(in, testConfig)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.MarshalIndent(struct {
				Skip  string `json:"skip,omitempty"`
				Patch []Op   `json:"patch"`
			}{skip, ops}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", name+".patch.golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./inject -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("patch differs from %s:\n%s", golden, got)
			}
			if len(ops) == 0 {
				return
			}
			patched := applyJSON(t, in, ops)
			if ok, err := Injected(patched); err != nil || !ok {
				t.Errorf("the patched pod does not count as injected (%v): %s", err, patched)
			}
			if again, skip, err := Patch(patched, testConfig); err != nil || len(again) != 0 || skip == "" {
				t.Errorf("patching the patched pod again gave %v %q %v, want nothing", again, skip, err)
			}
		})
	}
}

// TestPatchOrder: a native sidecar runs after detour-init and before the app's own init
// containers; a classic one is the first app container and detour-init the last init container.
func TestPatchOrder(t *testing.T) {
	for _, c := range []struct {
		file, sidecar string
		init, app     []string
	}{
		{"statefulset", Native, []string{InitContainer, ProxyContainer, "migrate"}, []string{"db"}},
		{"job", Native, []string{InitContainer, ProxyContainer}, []string{"loader"}},
		{"cronjob", Classic, []string{"fetch", InitContainer}, []string{ProxyContainer, "report"}},
		{"job", Classic, []string{InitContainer}, []string{ProxyContainer, "loader"}},
	} {
		in, _ := os.ReadFile("testdata/pods/" + c.file + ".json")
		cfg := testConfig
		cfg.Sidecar = c.sidecar
		ops, _, err := Patch(in, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Spec struct {
				InitContainers, Containers []struct {
					Name          string
					RestartPolicy string
				}
			}
		}
		if err := json.Unmarshal(applyJSON(t, in, ops), &p); err != nil {
			t.Fatal(err)
		}
		var gotInit, gotApp []string
		for _, x := range p.Spec.InitContainers {
			gotInit = append(gotInit, x.Name)
			if x.Name == ProxyContainer && x.RestartPolicy != "Always" {
				t.Errorf("%s: the native sidecar has restartPolicy %q", c.file, x.RestartPolicy)
			}
		}
		for _, x := range p.Spec.Containers {
			gotApp = append(gotApp, x.Name)
		}
		if strings.Join(gotInit, ",") != strings.Join(c.init, ",") || strings.Join(gotApp, ",") != strings.Join(c.app, ",") {
			t.Errorf("%s %s: init %v containers %v, want %v %v", c.file, c.sidecar, gotInit, gotApp, c.init, c.app)
		}
	}
}

// TestPatchProbePaths: the kubelet's HTTP and gRPC probes, with named ports resolved, become
// the proxy's --probe-paths; HTTPS and TCP probes do not.
func TestPatchProbePaths(t *testing.T) {
	for file, want := range map[string]string{
		"replicaset": "8000/ready 8000/live",
		"deployment": "8080" + GRPCHealthPath,
		"pod":        "",
	} {
		in, _ := os.ReadFile("testdata/pods/" + file + ".json")
		var p pod
		if err := json.Unmarshal(in, &p); err != nil {
			t.Fatal(err)
		}
		if got := probePaths(&p); got != want {
			t.Errorf("%s: probe paths %q, want %q", file, got, want)
		}
		if got, err := mtls.ParseProbePaths(want); err != nil || len(got) != min(len(want), 1) {
			t.Errorf("%s: mtls.ParseProbePaths(%q) = %v, %v", file, want, got, err)
		}
	}
}

// TestPatchRefusesBadAnnotations: a pod that asks for the mesh with a bad setting is refused
// with the annotation's name, not injected with a guess.
func TestPatchRefusesBadAnnotations(t *testing.T) {
	for ann, val := range map[string]string{
		AnnotationSidecar:           "sometimes",
		AnnotationSkipInboundPorts:  "22,x",
		AnnotationSkipOutboundPorts: "70000",
		AnnotationSkipOutboundCIDRs: "10.0.0.0/33",
		AnnotationInboundPolicy:     "lax",
		AnnotationOpaquePorts:       "0",
		AnnotationLogLevel:          "loud",
		AnnotationCPURequest:        "lots",
		AnnotationMemoryLimit:       "-1Mi",
	} {
		in := `{"metadata":{"annotations":{` + strconv.Quote(ann) + `:` + strconv.Quote(val) + `}},"spec":{"containers":[{"name":"a"}]}}`
		_, _, err := Patch([]byte(in), testConfig)
		if err == nil || !strings.Contains(err.Error(), ann) {
			t.Errorf("%s=%q: error %v, want one naming the annotation", ann, val, err)
		}
	}
	if _, _, err := Patch([]byte(`{"spec":{"containers":[]}}`), Config{}); err == nil {
		t.Error("a config without a trust anchor was accepted")
	}
	if _, _, err := Patch([]byte(`{"spec":`), testConfig); err == nil {
		t.Error("truncated JSON was accepted")
	}
}

func TestWanted(t *testing.T) {
	en := map[string]string{AnnotationInject: Enabled}
	dis := map[string]string{AnnotationInject: Disabled}
	for _, c := range []struct {
		pod, ns map[string]string
		want    bool
		err     bool
	}{
		{en, nil, true, false},
		{nil, en, true, false},
		{dis, en, false, false},
		{en, dis, true, false},
		{nil, nil, false, false},
		{map[string]string{AnnotationInject: "true"}, en, false, true},
	} {
		got, why, err := Wanted(c.pod, c.ns)
		if got != c.want || (err != nil) != c.err || (err == nil && why == "") {
			t.Errorf("Wanted(%v, %v) = %v %q %v", c.pod, c.ns, got, why, err)
		}
	}
}

// applyJSON applies ops ("add" only, as Patch emits) to doc as RFC 6902 §4.1 says.
func applyJSON(t *testing.T, doc []byte, ops []Op) []byte {
	t.Helper()
	var root any
	if err := json.Unmarshal(doc, &root); err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		if op.Op != "add" {
			t.Fatalf("unexpected op %q", op.Op)
		}
		v, err := json.Marshal(op.Value)
		if err != nil {
			t.Fatal(err)
		}
		var val any
		json.Unmarshal(v, &val)
		root = addAt(t, root, strings.Split(op.Path, "/")[1:], val)
	}
	out, err := json.Marshal(root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func addAt(t *testing.T, node any, path []string, val any) any {
	t.Helper()
	key := strings.NewReplacer("~1", "/", "~0", "~").Replace(path[0])
	switch n := node.(type) {
	case map[string]any:
		if len(path) == 1 {
			n[key] = val
			return n
		}
		child, ok := n[key]
		if !ok {
			t.Fatalf("path element %q missing", key)
		}
		n[key] = addAt(t, child, path[1:], val)
		return n
	case []any:
		i := len(n)
		if key != "-" {
			var err error
			if i, err = strconv.Atoi(key); err != nil || i > len(n) {
				t.Fatalf("bad index %q", key)
			}
		}
		if len(path) == 1 {
			n = append(n[:i], append([]any{val}, n[i:]...)...)
			return n
		}
		n[i] = addAt(t, n[i], path[1:], val)
		return n
	}
	t.Fatalf("cannot descend into %T at %q", node, key)
	return nil
}
