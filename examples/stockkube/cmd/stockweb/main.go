// Command stockweb serves the StockWeb page of the StockKube example: each load makes many
// concurrent calls to StockData over one gRPC connection and shows which replica answered.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/detourmesh/detour/examples/stockkube/stockweb"
)

func main() {
	err := run(os.Args[1:])
	var usage usageError
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "stockweb:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "stockweb:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line, exit status 2 like the flag package's own errors.
type usageError struct{ error }

func run(args []string) error {
	fs := flag.NewFlagSet("stockweb", flag.ContinueOnError)
	listen := fs.String("listen", ":8000", "address to serve HTTP on")
	addr := fs.String("stockdata", envOr("STOCKDATA_ADDR", "127.0.0.1:8080"), "host:port of the StockData service (env STOCKDATA_ADDR)")
	calls := fs.Int("calls", 100, "concurrent gRPC calls per page load")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on one page load")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err} // the flag package has printed the usage
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q; see stockweb -h", fs.Args())}
	}
	if *calls < 1 || *timeout <= 0 {
		return usageError{fmt.Errorf("--calls (%d) and --timeout (%s) must be positive", *calls, *timeout)}
	}
	s, err := stockweb.New(stockweb.Config{StockData: *addr, Calls: *calls, Timeout: *timeout})
	if err != nil {
		return usageError{fmt.Errorf("%w (set --stockdata or STOCKDATA_ADDR)", err)}
	}
	defer s.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on --listen %s: %w", *listen, err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	slog.Info("stockweb serving", "addr", ln.Addr().String(), "stockdata", *addr, "calls", *calls)

	select {
	case err := <-served:
		return fmt.Errorf("serving HTTP: %w", err)
	case <-ctx.Done():
	}
	slog.Info("stockweb shutting down")
	// A page load takes at most --timeout, so that long is enough for the ones in flight.
	shutCtx, cancel := context.WithTimeout(context.Background(), *timeout+time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
