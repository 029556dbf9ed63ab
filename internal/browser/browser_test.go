package browser

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"
)

func TestOpenRendersALoopbackPageAndScreenshots(t *testing.T) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `<!DOCTYPE html><title>probe</title><p id="p">hello from loopback</p>`)
	}))
	t.Cleanup(web.Close)

	ctx := Open(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(web.URL), chromedp.WaitVisible(chromedp.ID("p"))); err != nil {
		t.Fatal(err)
	}
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("p")))
	if err != nil {
		t.Fatal(err)
	}
	if text != "hello from loopback" {
		t.Fatalf("text %q", text)
	}
	path := filepath.Join(t.TempDir(), "sub", "probe.png")
	Screenshot(t, ctx, path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("%s is not a PNG: % x", path, b[:min(8, len(b))])
	}
}

func TestArtifactPath(t *testing.T) {
	t.Setenv("DETOUR_ARTIFACTS", "/artifacts")
	if got, want := ArtifactPath(t, "page.png"), "/artifacts/TestArtifactPath-page.png"; got != want {
		t.Fatalf("ArtifactPath = %q, want %q", got, want)
	}
	t.Run("a sub/test name", func(t *testing.T) {
		if got, want := ArtifactPath(t, "x.png"), "/artifacts/TestArtifactPath_a_sub_test_name-x.png"; got != want {
			t.Fatalf("ArtifactPath = %q, want %q", got, want)
		}
	})
}
