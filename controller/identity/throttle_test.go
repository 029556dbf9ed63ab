package identity

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/identitypb"
	"github.com/detourmesh/detour/spiffe"
)

// throttledServer is the Identity service over real gRPC behind a Throttle of limit failures a
// minute on a clock the test moves, and a way to call Certify from a loopback source address.
type throttledServer struct {
	t     *testing.T
	clock time.Time
	addr  string
	dial  func(src string) identitypb.IdentityClient
}

func newThrottledServer(t *testing.T, limit int) *throttledServer {
	c := testCA(t)
	throttle := NewThrottle(testTokens(t), limit, time.Minute, quietLogger())
	s := &throttledServer{t: t, clock: time.Now()}
	throttle.now = func() time.Time { return s.clock }
	s.addr = listen(t, c, NewServer(Config{CA: c, Verifier: throttle, TTL: time.Hour, Logger: quietLogger()}))
	s.dial = func(src string) identitypb.IdentityClient {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return dial(t, s.addr, c, spiffe.ControllerID(td),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
	}
	return s
}

// certify asks client for a certificate of identity with token and returns the status code.
func (s *throttledServer) certify(client identitypb.IdentityClient, identity, token string) codes.Code {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := client.Certify(ctx, &identitypb.CertifyRequest{Identity: identity, Csr: csrDER(s.t, p256(s.t)), Token: token})
	return status.Code(err)
}

const badToken = "not-a-token-of-this-controller"

// TestThrottleRefusesAClaimThatKeepsFailing: over real gRPC, an address that fails Limit
// times claiming an identity is refused for that identity even with a good token until its
// window ends; another address is not.
func TestThrottleRefusesAClaimThatKeepsFailing(t *testing.T) {
	s := newThrottledServer(t, 3)
	bad, other := s.dial("127.0.0.1"), s.dial("127.0.0.2")
	for i := range 3 {
		if got := s.certify(bad, stockdata.String(), badToken); got != codes.PermissionDenied {
			t.Fatalf("bad proof %d: %v, want PermissionDenied", i+1, got)
		}
	}
	if got := s.certify(bad, stockdata.String(), stockdataToken); got != codes.ResourceExhausted {
		t.Fatalf("a good token after 3 failures of the same claim from the same address: %v, want ResourceExhausted", got)
	}
	if got := s.certify(other, stockdata.String(), stockdataToken); got != codes.OK {
		t.Fatalf("another address: %v, want OK", got)
	}
	s.clock = s.clock.Add(time.Minute)
	if got := s.certify(bad, stockdata.String(), stockdataToken); got != codes.OK {
		t.Fatalf("after the window: %v, want OK", got)
	}
}

// TestThrottleSparesOtherIdentitiesBehindOneAddress: behind one SNAT address, a bad client
// claiming one identity does not lock out an honest proxy claiming another, one that has
// never proven itself there included.
func TestThrottleSparesOtherIdentitiesBehindOneAddress(t *testing.T) {
	s := newThrottledServer(t, 3)
	snat := s.dial("127.0.0.1")
	for range 5 { // past the limit: the last two are refused unchecked
		s.certify(snat, stockdata.String(), badToken)
	}
	if got := s.certify(snat, stockweb.String(), stockwebToken); got != codes.OK {
		t.Fatalf("an honest proxy claiming another identity behind the same address: %v, want OK", got)
	}
	if got := s.certify(snat, stockdata.String(), stockdataToken); got != codes.ResourceExhausted {
		t.Fatalf("the failing claim itself: %v, want ResourceExhausted", got)
	}
}

// TestThrottleForgivesAClaimThatProvesItself: a successful proof resets its claim's count, so
// an honest proxy that succeeds now and then is never locked out by occasional failures at its
// address (a bad client claiming the same identity, a token file replaced mid-read).
func TestThrottleForgivesAClaimThatProvesItself(t *testing.T) {
	s := newThrottledServer(t, 3)
	c := s.dial("127.0.0.1")
	for round := range 4 {
		for range 2 {
			if got := s.certify(c, stockdata.String(), badToken); got != codes.PermissionDenied {
				t.Fatalf("round %d: a bad proof: %v, want PermissionDenied (counted, not refused)", round, got)
			}
		}
		if got := s.certify(c, stockdata.String(), stockdataToken); got != codes.OK {
			t.Fatalf("round %d: the good proof after 2 failures: %v, want OK", round, got)
		}
	}
}

// TestThrottleSuccessResetsOnlyItsOwnClaim: a caller holding one valid token cannot use it to
// wash out the failures of another identity's claim at the same address.
func TestThrottleSuccessResetsOnlyItsOwnClaim(t *testing.T) {
	s := newThrottledServer(t, 3)
	c := s.dial("127.0.0.1")
	for range 3 {
		s.certify(c, stockdata.String(), badToken)
	}
	if got := s.certify(c, stockweb.String(), stockwebToken); got != codes.OK {
		t.Fatalf("stockweb's good proof: %v", got)
	}
	// The token of stockweb, presented while claiming stockdata, proves stockweb: it is refused
	// (PermissionDenied) and resets nothing of stockdata's.
	if got := s.certify(c, stockdata.String(), stockdataToken); got != codes.ResourceExhausted {
		t.Fatalf("stockdata's claim after stockweb proved itself: %v, want still ResourceExhausted", got)
	}
}

// ctxFrom is a call's context as the Throttle sees it: a gRPC peer at addr claiming claimed.
func ctxFrom(addr, claimed string) context.Context {
	return withClaim(peerContext(addr), claimed)
}

// TestThrottleBoundsAClientThatVariesItsClaim: a client that claims a new identity at every
// attempt escapes the per-claim count, so its address is refused once ten times the limit has
// failed, but for identities that proved themselves from there before; and a claim with
// standing is still refused by its own count.
func TestThrottleBoundsAClientThatVariesItsClaim(t *testing.T) {
	clock := time.Now()
	th := NewThrottle(testTokens(t), 2, time.Minute, quietLogger())
	th.now = func() time.Time { return clock }
	const addr = "198.18.0.9:40000"
	if _, err := th.Verify(ctxFrom(addr, stockweb.String()), stockwebToken); err != nil {
		t.Fatal(err) // stockweb has standing at the address from here
	}
	for i := range 20 { // 10 claims, 2 failures each: no claim reaches its limit of 2 twice
		claim := "spiffe://cluster.local/ns/x/sa/guess-" + string(rune('a'+i/2))
		if _, err := th.Verify(ctxFrom(addr, claim), badToken); !errors.Is(err, ErrUnproven) {
			t.Fatalf("attempt %d claiming %s: %v, want checked and unproven", i, claim, err)
		}
		if i%2 == 1 && th.Refused(ctxFrom(addr, claim)) == nil {
			t.Fatalf("%s failed twice (its limit) and is not refused", claim)
		}
	}
	if err := th.Refused(ctxFrom(addr, "spiffe://cluster.local/ns/x/sa/another-guess")); err == nil {
		t.Fatal("a new claim from an address that failed 20 times under 10 claims was not refused")
	}
	if err := th.Refused(ctxFrom(addr, stockdata.String())); err == nil {
		t.Fatal("an identity without standing at the address was not refused with the address")
	}
	if _, err := th.Verify(ctxFrom(addr, stockweb.String()), stockwebToken); err != nil {
		t.Fatalf("stockweb, which proved itself from the address before: %v, want served", err)
	}
	if err := th.Refused(ctxFrom("198.18.0.10:40000", stockdata.String())); err != nil {
		t.Fatalf("another address: %v", err)
	}
	for range 2 {
		th.Verify(ctxFrom(addr, stockweb.String()), badToken)
	}
	if err := th.Refused(ctxFrom(addr, stockweb.String())); err == nil {
		t.Fatal("a claim with standing that failed its own limit was not refused")
	}
	clock = clock.Add(time.Minute)
	if err := th.Refused(ctxFrom(addr, "spiffe://cluster.local/ns/x/sa/another-guess")); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if err := th.Refused(ctxFrom(addr, stockweb.String())); err != nil {
		t.Fatalf("stockweb after the window: %v", err)
	}
	clock = clock.Add(StandingFor)
	for i := range 20 {
		th.Verify(ctxFrom(addr, "spiffe://cluster.local/ns/x/sa/again-"+string(rune('a'+i/2))), badToken)
	}
	if err := th.Refused(ctxFrom(addr, stockweb.String())); err == nil {
		t.Fatal("standing outlived StandingFor")
	}
}

// TestThrottleStandingIsPerAddressAndIdentity: standing earned at one address by one identity
// exempts neither another address nor another identity.
func TestThrottleStandingIsPerAddressAndIdentity(t *testing.T) {
	th := NewThrottle(testTokens(t), 1, time.Minute, quietLogger())
	if _, err := th.Verify(ctxFrom("198.18.0.9:1", stockweb.String()), stockwebToken); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"198.18.0.9:2", "198.18.0.10:2"} {
		for i := range 10 {
			th.Verify(ctxFrom(addr, "spiffe://cluster.local/ns/x/sa/g"+string(rune('a'+i))), badToken)
		}
	}
	if err := th.Refused(ctxFrom("198.18.0.10:3", stockweb.String())); err == nil {
		t.Error("stockweb's standing at 198.18.0.9 exempted it at 198.18.0.10")
	}
	if err := th.Refused(ctxFrom("198.18.0.9:3", stockdata.String())); err == nil {
		t.Error("stockweb's standing exempted stockdata at the same address")
	}
	if err := th.Refused(ctxFrom("198.18.0.9:3", stockweb.String())); err != nil {
		t.Errorf("stockweb where it has standing: %v", err)
	}
}
