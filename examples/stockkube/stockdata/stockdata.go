// Package stockdata is the StockData gRPC service of the StockKube example: quotes for stock
// symbols, each answer naming the replica that served it. It is a plain gRPC server with no
// knowledge of Detour, so the mesh's effect is visible from outside.
package stockdata

import (
	"context"
	"hash/fnv"
	"io"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/examples/stockkube/stockpb"
)

// Symbols are the symbols StockData knows; any other is NotFound.
var Symbols = []string{"ACME", "BOLT", "CRUX", "DYNA", "EPIC", "FLUX", "GRID", "HALO", "IONS", "JADE"}

// Server implements stockpb.StockDataServer.
type Server struct {
	stockpb.UnimplementedStockDataServer
	// ID names this replica in every answer, like a pod name.
	ID string
	// Delay is added to every answer: a slow replica.
	Delay time.Duration
	// Fail is the fraction of calls (0 to 1) answered UNAVAILABLE instead: a failing replica.
	// Failures are spread evenly (every second call at 0.5), so a test sees the fraction asked.
	Fail  float64
	calls atomic.Uint64
}

// Register adds s to g.
func (s *Server) Register(g *grpc.Server) { stockpb.RegisterStockDataServer(g, s) }

func (s *Server) quote(ctx context.Context, symbol string, padding int32) (*stockpb.Quote, error) {
	if s.Fail > 0 {
		n := float64(s.calls.Add(1))
		if math.Floor(n*s.Fail) > math.Floor((n-1)*s.Fail) {
			return nil, status.Errorf(codes.Unavailable, "replica %s fails %.0f%% of its calls (--fail)", s.ID, s.Fail*100)
		}
	}
	symbol = strings.ToUpper(symbol)
	known := false
	for _, k := range Symbols {
		known = known || k == symbol
	}
	if !known {
		return nil, status.Errorf(codes.NotFound, "unknown symbol %q", symbol)
	}
	if s.Delay > 0 {
		select {
		case <-time.After(s.Delay):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if padding < 0 || padding > 64<<20 {
		return nil, status.Errorf(codes.InvalidArgument, "reply_padding %d out of range", padding)
	}
	return &stockpb.Quote{Symbol: symbol, Price: price(symbol), Server: s.ID, Padding: make([]byte, padding)}, nil
}

// price is a stable base per symbol with a small drift over time.
func price(symbol string) float64 {
	h := fnv.New32a()
	h.Write([]byte(symbol))
	base := float64(h.Sum32()%90000)/100 + 10
	drift := float64(time.Now().UnixMilli()/250%200-100) / 100
	return base + drift
}

// GetQuote implements stockpb.StockDataServer. It also sends the replica as header and binary
// trailer metadata, so tests can see metadata cross the mesh.
func (s *Server) GetQuote(ctx context.Context, req *stockpb.QuoteRequest) (*stockpb.Quote, error) {
	grpc.SetHeader(ctx, metadata.Pairs("x-stock-server", s.ID))
	grpc.SetTrailer(ctx, metadata.Pairs("x-stock-server-bin", s.ID))
	return s.quote(ctx, req.Symbol, req.ReplyPadding)
}

// WatchQuotes implements stockpb.StockDataServer.
func (s *Server) WatchQuotes(req *stockpb.QuoteRequest, stream stockpb.StockData_WatchQuotesServer) error {
	n := max(req.Count, 1)
	for range n {
		q, err := s.quote(stream.Context(), req.Symbol, req.ReplyPadding)
		if err != nil {
			return err
		}
		if err := stream.Send(q); err != nil {
			return err
		}
	}
	return nil
}

// RecordTrades implements stockpb.StockDataServer.
func (s *Server) RecordTrades(stream stockpb.StockData_RecordTradesServer) error {
	sum := &stockpb.TradeSummary{Server: s.ID}
	for {
		t, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(sum)
		}
		if err != nil {
			return err
		}
		sum.Trades++
		sum.Shares += int64(t.Shares)
	}
}

// TradeLive implements stockpb.StockDataServer.
func (s *Server) TradeLive(stream stockpb.StockData_TradeLiveServer) error {
	for {
		t, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		q, err := s.quote(stream.Context(), t.Symbol, 0)
		if err != nil {
			return err
		}
		if err := stream.Send(q); err != nil {
			return err
		}
	}
}
