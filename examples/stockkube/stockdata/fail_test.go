package stockdata

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/examples/stockkube/stockpb"
)

func TestFailAnswersTheFractionAskedUnavailable(t *testing.T) {
	for _, fail := range []float64{0, 0.25, 0.5, 1} {
		s := &Server{ID: "r", Fail: fail}
		failed := 0
		for range 1000 {
			_, err := s.GetQuote(context.Background(), &stockpb.QuoteRequest{Symbol: "ACME"})
			switch status.Code(err) {
			case codes.OK:
			case codes.Unavailable:
				failed++
			default:
				t.Fatalf("--fail %v: %v", fail, err)
			}
		}
		if want := int(fail * 1000); failed != want {
			t.Errorf("--fail %v: %d of 1000 calls failed, want %d", fail, failed, want)
		}
	}
}
