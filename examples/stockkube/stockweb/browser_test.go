package stockweb

import (
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/detourmesh/detour/internal/browser"
)

// TestBrowserShowsSeveralServers looks at the page as the demo's viewer does: with a
// per-request balanced backend, the Server column names more than one replica.
func TestBrowserShowsSeveralServers(t *testing.T) {
	s := newServer(t, Config{StockData: serveGRPC(t, &balancedDouble{})})
	web := httptest.NewServer(s.Handler())
	t.Cleanup(web.Close)

	ctx := browser.Open(t)
	if err := chromedp.Do(ctx,
		chromedp.Navigate(web.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("table.quotes td.server")),
	); err != nil {
		t.Fatal(err)
	}
	servers, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`Array.from(document.querySelectorAll("td.server"), td => td.textContent.trim())`))
	if err != nil {
		t.Fatal(err)
	}
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	browser.Screenshot(t, ctx, browser.ArtifactPath(t, "stockweb.png"))

	distinct := slices.Compact(slices.Sorted(slices.Values(servers)))
	if title != "StockKube" || len(servers) != 100 || len(distinct) < 2 {
		t.Fatalf("title %q, %d server cells naming %v; want StockKube, 100 cells, at least 2 servers", title, len(servers), distinct)
	}
}
