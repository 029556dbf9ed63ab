package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/identitypb"
	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/spiffe"
)

const (
	stockdataToken = "3f1c9a0e5b7d42c8a16e0f9b2d4c7a51"
	stockwebToken  = "9b2e41d07c3f5a8e6d1b0c4f7a2e9d36"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("cluster.local")
	stockdata = spiffeid.RequireFromString("spiffe://cluster.local/ns/stocks/sa/stockdata")
	stockweb  = spiffeid.RequireFromString("spiffe://cluster.local/ns/web/sa/stockweb")
)

const tokenFile = `# bootstrap tokens for the demo
` + stockdataToken + `   spiffe://cluster.local/ns/stocks/sa/stockdata

` + stockwebToken + "\tspiffe://cluster.local/ns/web/sa/stockweb\n"

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testTokens(t testing.TB) *Tokens {
	t.Helper()
	tok, err := ParseTokens([]byte(tokenFile), td)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func testCA(t testing.TB) *ca.CA {
	t.Helper()
	c, err := ca.Init(filepath.Join(t.TempDir(), "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serve runs the Identity service on a loopback TLS port, as the controller does, and returns a
// client that verifies the controller against the trust anchor.
func serve(t *testing.T, c *ca.CA, srv *Server) identitypb.IdentityClient {
	t.Helper()
	return dial(t, listen(t, c, srv), c, spiffe.ControllerID(td))
}

// listen runs the Identity service on a loopback TLS port and returns its address.
func listen(t *testing.T, c *ca.CA, srv *Server) string {
	t.Helper()
	tlsCfg, err := c.ServerTLS(spiffe.ControllerID(td), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	identitypb.RegisterIdentityServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, c *ca.CA, server spiffeid.ID, opts ...grpc.DialOption) identitypb.IdentityClient {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(c.TrustAnchor())
	opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(spiffe.ClientTLS(roots, server, nil))))
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return identitypb.NewIdentityClient(conn)
}

func csrDER(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestCertifyIssuesForAProvenIdentity(t *testing.T) {
	c := testCA(t)
	client := serve(t, c, NewServer(Config{CA: c, Verifier: testTokens(t), TTL: time.Hour, Logger: quietLogger()}))
	key := p256(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	resp, err := client.Certify(ctx, &identitypb.CertifyRequest{Identity: stockdata.String(), Csr: csrDER(t, key), Token: stockdataToken})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(resp.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Errorf("certificate is not for the key sent")
	}
	if resp.NotAfter != leaf.NotAfter.Unix() {
		t.Errorf("not_after %d, certificate says %d", resp.NotAfter, leaf.NotAfter.Unix())
	}
	if len(resp.TrustAnchors) != 1 || !c.TrustAnchor().Equal(mustParse(t, resp.TrustAnchors[0])) {
		t.Errorf("trust_anchors is not the CA's anchor")
	}
	chain := append([][]byte{resp.Certificate}, resp.Intermediates...)
	roots := x509.NewCertPool()
	roots.AddCert(c.TrustAnchor())
	id, err := spiffe.VerifyRawPeer(chain, roots, x509.ExtKeyUsageClientAuth, td, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if id != stockdata {
		t.Errorf("certificate is for %s, want %s", id, stockdata)
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertifyRefuses(t *testing.T) {
	c := testCA(t)
	client := serve(t, c, NewServer(Config{CA: c, Verifier: testTokens(t), Logger: quietLogger()}))
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	good := csrDER(t, p256(t))
	tests := []struct {
		name     string
		req      *identitypb.CertifyRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"a token of another identity does not prove this one",
			&identitypb.CertifyRequest{Identity: stockdata.String(), Csr: good, Token: stockwebToken},
			codes.PermissionDenied, "does not prove identity spiffe://cluster.local/ns/stocks/sa/stockdata"},
		{"an unknown token proves nothing",
			&identitypb.CertifyRequest{Identity: stockdata.String(), Csr: good, Token: "0000000000000000000000000000000"},
			codes.PermissionDenied, "does not prove identity"},
		{"a prefix of a valid token proves nothing",
			&identitypb.CertifyRequest{Identity: stockdata.String(), Csr: good, Token: stockdataToken[:20]},
			codes.PermissionDenied, "does not prove identity"},
		{"no token proves nothing",
			&identitypb.CertifyRequest{Identity: stockdata.String(), Csr: good},
			codes.PermissionDenied, "does not prove identity"},
		{"an identity outside the trust domain is refused",
			&identitypb.CertifyRequest{Identity: "spiffe://evil.example/ns/stocks/sa/stockdata", Csr: good, Token: stockdataToken},
			codes.InvalidArgument, "not a workload in trust domain cluster.local"},
		{"an identity that is not a SPIFFE ID is refused",
			&identitypb.CertifyRequest{Identity: "stockdata.stocks", Csr: good, Token: stockdataToken},
			codes.InvalidArgument, "not a SPIFFE ID"},
		{"a CSR that is not DER is refused",
			&identitypb.CertifyRequest{Identity: stockdata.String(), Csr: []byte("-----BEGIN CERTIFICATE REQUEST-----"), Token: stockdataToken},
			codes.InvalidArgument, "not a DER PKCS#10"},
		{"an RSA CSR is refused",
			&identitypb.CertifyRequest{Identity: stockdata.String(), Csr: csrDER(t, rsaKey), Token: stockdataToken},
			codes.InvalidArgument, "ECDSA P-256"},
		{"a CSR with a broken signature is refused",
			&identitypb.CertifyRequest{Identity: stockdata.String(), Csr: flipLastByte(good), Token: stockdataToken},
			codes.InvalidArgument, "signature does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			t.Cleanup(cancel)
			resp, err := client.Certify(ctx, tt.req)
			if err == nil {
				t.Fatalf("Certify issued a certificate (%d bytes)", len(resp.Certificate))
			}
			st := status.Convert(err)
			if st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Errorf("got %s %q, want %s containing %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			for _, tok := range []string{stockdataToken, stockwebToken} {
				if strings.Contains(st.Message(), tok) {
					t.Errorf("the error reveals a token: %q", st.Message())
				}
			}
		})
	}
}

func flipLastByte(b []byte) []byte {
	b = append([]byte(nil), b...)
	b[len(b)-1] ^= 0x01
	return b
}

func TestClientRefusesAControllerWithAnotherIdentity(t *testing.T) {
	c := testCA(t)
	srv := NewServer(Config{CA: c, Verifier: testTokens(t), Logger: quietLogger()})
	tlsCfg, err := c.ServerTLS(stockweb, time.Hour) // a workload posing as the controller
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	identitypb.RegisterIdentityServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	client := dial(t, lis.Addr().String(), c, spiffe.ControllerID(td))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	_, err = client.Certify(ctx, &identitypb.CertifyRequest{Identity: stockdata.String(), Csr: csrDER(t, p256(t)), Token: stockdataToken})
	if err == nil || !strings.Contains(err.Error(), "want spiffe://cluster.local/ns/detour/sa/controller") {
		t.Fatalf("a token was sent to a server that is not the controller: err = %v", err)
	}
}

func TestParseTokens(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		wantErr string // empty: valid
		wantLen int
	}{
		{"comments, blank lines, spaces and tabs are accepted", tokenFile, "", 2},
		{"an empty file holds no tokens", "", "", 0},
		{"one identity may have several tokens",
			stockdataToken + " " + stockdata.String() + "\n" + stockwebToken + " " + stockdata.String() + "\n", "", 2},
		{"a short token is refused", "short-token " + stockdata.String(), "line 1: the token is 11 bytes", 0},
		{"the same token twice is refused",
			stockdataToken + " " + stockdata.String() + "\n" + stockdataToken + " " + stockweb.String(), "line 2: the same token is already on line 1", 0},
		{"an identity in another trust domain is refused",
			stockdataToken + " spiffe://evil.example/ns/a/sa/b", "not a workload identity in trust domain cluster.local", 0},
		{"a line without an identity is refused", stockdataToken, "line 1: want \"TOKEN SPIFFE-ID\"", 0},
		{"a line with three fields is refused", stockdataToken + " " + stockdata.String() + " extra", "got 3 fields", 0},
		{"an identity that is not a SPIFFE ID is refused", stockdataToken + " stockdata", "is not a SPIFFE ID", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := ParseTokens([]byte(tt.file), td)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tok.Len() != tt.wantLen {
					t.Errorf("%d tokens, want %d", tok.Len(), tt.wantLen)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			for _, secret := range []string{stockdataToken, stockwebToken, "short-token"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error reveals a token: %q", err)
				}
			}
		})
	}
}

func TestTokensVerify(t *testing.T) {
	tok := testTokens(t)
	tests := []struct {
		name  string
		token string
		want  spiffeid.ID // zero: refused
	}{
		{"the first token proves its identity", stockdataToken, stockdata},
		{"the last token proves its identity", stockwebToken, stockweb},
		{"a token with a trailing newline proves nothing", stockdataToken + "\n", spiffeid.ID{}},
		{"the empty token proves nothing", "", spiffeid.ID{}},
		{"a token differing in one byte proves nothing", "3f1c9a0e5b7d42c8a16e0f9b2d4c7a50", spiffeid.ID{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tok.Verify(context.Background(), tt.token)
			if tt.want.IsZero() {
				if err == nil {
					t.Fatalf("proved %s", id)
				}
				return
			}
			if err != nil || id != tt.want {
				t.Fatalf("got %s, %v; want %s", id, err, tt.want)
			}
		})
	}
}
