// Package browser drives a headless Chromium from Go tests, so a test can check a page the way
// a user sees it (the StockKube page, the controller dashboard) rather than by grepping HTML.
// It uses the distribution's Chromium (Debian: apt-get install chromium) with a fixed, minimal
// set of flags, so tests never download a browser and never reach the network on their own.
package browser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/detourmesh/detour/internal/syncbuf"
)

// Chromium is where Debian installs Chromium; Open falls back to "chromium" on $PATH.
const Chromium = "/usr/bin/chromium"

// Timeout bounds everything a test does with one browser, so a hung page cannot hang the test.
const Timeout = 60 * time.Second

// missing is the reason given when no Chromium is found.
const missing = "install chromium (apt-get install chromium)"

// find returns the Chromium executable, or "" if there is none.
func find() string {
	if st, err := os.Stat(Chromium); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return Chromium
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	return ""
}

// Open starts a headless Chromium with a fresh profile under t.TempDir and returns a chromedp
// context for one tab, valid for Timeout. The browser is closed and its profile removed in
// t.Cleanup. Without Chromium the test is skipped, or fails when DETOUR_REQUIRE_ROOT=1 (CI
// runs must not skip silently). Call Open from the test goroutine.
func Open(t testing.TB) context.Context {
	t.Helper()
	exe := find()
	if exe == "" {
		if os.Getenv("DETOUR_REQUIRE_ROOT") == "1" {
			t.Fatal(missing)
		}
		t.Skip(missing)
	}
	profile := filepath.Join(t.TempDir(), "profile")
	out := &syncbuf.Buffer{}
	// Exactly these flags and no chromedp defaults: each one keeps the browser from doing
	// work (or network traffic) a test did not ask for. chromedp adds only
	// --remote-debugging-pipe and about:blank.
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // tests run as root, where the sandbox cannot start
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(profile),
		chromedp.CombinedOutput(out),
	}
	deadline, cancelDeadline := context.WithTimeout(context.Background(), Timeout)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(deadline, opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf), chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		// Close gracefully first so Chromium flushes and exits before t.TempDir is removed;
		// cancelling the allocator then waits for the process.
		closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := chromedp.Cancel(closeCtx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("browser: closing chromium: %v", err)
		}
		cancel()
		cancelTab()
		cancelAlloc()
		cancelDeadline()
		if t.Failed() && out.Len() > 0 {
			t.Logf("chromium output:\n%s", out.String())
		}
	})
	// Start the browser now, so a broken install fails here with a clear message and not in
	// the test's first action.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("browser: starting %s: %v\n%s", exe, err, out.String())
	}
	return ctx
}

// Screenshot saves a full-page PNG of the current tab to path, creating its directory.
func Screenshot(t testing.TB, ctx context.Context, path string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 means PNG
	if err != nil {
		t.Fatalf("browser: screenshot: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("browser: screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("browser: screenshot: %v", err)
	}
	t.Logf("screenshot: %s", path)
}

// ArtifactPath returns where a test should save the artifact name: under $DETOUR_ARTIFACTS
// when set (CI keeps that directory), else under t.TempDir. The file name is prefixed with
// the test's name so artifacts of different tests do not collide.
func ArtifactPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("DETOUR_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	return filepath.Join(dir, fmt.Sprintf("%s-%s", sanitize(t.Name()), name))
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	return string(b)
}
