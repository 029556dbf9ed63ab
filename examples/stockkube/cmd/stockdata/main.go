// Command stockdata serves the StockData gRPC service of the StockKube example.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"

	"github.com/detourmesh/detour/examples/stockkube/stockdata"
)

func main() {
	host, _ := os.Hostname()
	listen := flag.String("listen", ":8080", "address to serve gRPC on")
	id := flag.String("id", envOr("STOCKDATA_ID", host), "replica name in every answer (env STOCKDATA_ID)")
	delay := flag.Duration("delay", 0, "added to every answer")
	fail := flag.Float64("fail", 0, "fraction of calls (0 to 1) answered UNAVAILABLE, spread evenly: a failing replica")
	flag.Parse()
	if *fail < 0 || *fail > 1 {
		fmt.Fprintf(os.Stderr, "stockdata: --fail %v: want a fraction from 0 to 1\n", *fail)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stockdata:", err)
		os.Exit(1)
	}
	g := grpc.NewServer()
	(&stockdata.Server{ID: *id, Delay: *delay, Fail: *fail}).Register(g)
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		g.GracefulStop()
	}()
	slog.Info("stockdata serving", "addr", ln.Addr().String(), "id", *id)
	if err := g.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "stockdata:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
