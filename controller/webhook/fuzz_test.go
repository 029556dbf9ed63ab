package webhook

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/detourmesh/detour/internal/syncbuf"
)

func testLogger(t *testing.T) *slog.Logger {
	var b syncbuf.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(b.String())
		}
	})
	return slog.New(slog.NewTextHandler(&b, nil))
}

// FuzzHandler posts arbitrary bodies to the webhook: it never panics and answers every body
// with a status, never a broken connection.
func FuzzHandler(f *testing.F) {
	raw, _ := os.ReadFile("../../inject/testdata/pods/deployment.json")
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"stocks","object":` + string(raw) + `}}`))
	f.Add([]byte(`{"request":{"kind":{"kind":"Pod"},"operation":"CREATE","object":{"metadata":{"annotations":{"detour.io/inject":"enabled"}},"spec":{"initContainers":{}}}}}`))
	h := &Handler{Config: testConfig, Logger: slog.New(slog.DiscardHandler)}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", InjectPath, bytes.NewReader(body)))
		if rec.Code == 0 {
			t.Fatal("no status")
		}
	})
}
