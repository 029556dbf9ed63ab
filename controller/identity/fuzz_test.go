package identity

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/identitypb"
)

// FuzzCertify feeds arbitrary bytes as CSR, token and identity to Certify. It must never panic,
// must refuse with InvalidArgument or PermissionDenied, and must issue only when the token is the
// one that proves the identity asked for, and then only for that identity.
func FuzzCertify(f *testing.F) {
	good := csrDER(f, p256(f))
	f.Add(good, stockdataToken, stockdata.String())
	f.Add(good, stockwebToken, stockdata.String())
	f.Add(good, stockdataToken, "spiffe://cluster.local/ns/stocks/sa/stockdata/")
	f.Add(good, stockdataToken, "spiffe://CLUSTER.local/ns/stocks/sa/stockdata")
	f.Add(good[:len(good)/2], stockdataToken, stockdata.String())
	f.Add([]byte{0x30, 0x82, 0xff, 0xff}, stockdataToken, stockdata.String())
	f.Add([]byte{}, "", "")
	c := testCA(f)
	srv := NewServer(Config{CA: c, Verifier: testTokens(f), TTL: time.Hour, Logger: quietLogger()})
	proves := map[string]string{stockdataToken: stockdata.String(), stockwebToken: stockweb.String()}
	f.Fuzz(func(t *testing.T, csr []byte, token, identity string) {
		resp, err := srv.Certify(context.Background(), &identitypb.CertifyRequest{Identity: identity, Csr: csr, Token: token})
		if err != nil {
			if code := status.Code(err); code != codes.InvalidArgument && code != codes.PermissionDenied {
				t.Fatalf("refused with %s: %v", code, err)
			}
			return
		}
		if proves[token] != identity {
			t.Fatalf("issued for %q with a token that does not prove it", identity)
		}
		leaf, err := x509.ParseCertificate(resp.Certificate)
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != identity {
			t.Fatalf("issued for %v, asked for %q", leaf.URIs, identity)
		}
	})
}
