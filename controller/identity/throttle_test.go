package identity

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/identitypb"
	"github.com/detourmesh/detour/spiffe"
)

// TestThrottleRefusesAnAddressThatKeepsFailing: over real gRPC, an address that fails Limit
// times is refused even with a good token until its window ends; another address is not.
func TestThrottleRefusesAnAddressThatKeepsFailing(t *testing.T) {
	c := testCA(t)
	throttle := NewThrottle(testTokens(t), 3, time.Minute, quietLogger())
	clock := time.Now()
	throttle.now = func() time.Time { return clock }
	srv := NewServer(Config{CA: c, Verifier: throttle, TTL: time.Hour, Logger: quietLogger()})
	addr := listen(t, c, srv)
	// Two clients on different loopback source addresses.
	from := func(src string) identitypb.IdentityClient {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return dial(t, addr, c, spiffe.ControllerID(td),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
	}
	bad, other := from("127.0.0.1"), from("127.0.0.2")
	certify := func(client identitypb.IdentityClient, token string) codes.Code {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.Certify(ctx, &identitypb.CertifyRequest{Identity: stockdata.String(), Csr: csrDER(t, p256(t)), Token: token})
		return status.Code(err)
	}
	for i := range 3 {
		if got := certify(bad, "not-a-token-of-this-controller"); got != codes.PermissionDenied {
			t.Fatalf("bad proof %d: %v, want PermissionDenied", i+1, got)
		}
	}
	if got := certify(bad, stockdataToken); got != codes.ResourceExhausted {
		t.Fatalf("a good token after 3 failures from the same address: %v, want ResourceExhausted", got)
	}
	if got := certify(other, stockdataToken); got != codes.OK {
		t.Fatalf("another address: %v, want OK", got)
	}
	clock = clock.Add(time.Minute)
	if got := certify(bad, stockdataToken); got != codes.OK {
		t.Fatalf("after the window: %v, want OK", got)
	}
}
