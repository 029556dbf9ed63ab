package h2

import (
	"crypto/tls"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// BenchmarkUnary1KiBTLS is BenchmarkUnary1KiB/one-engine with the client connection over TLS
// (TLS over a raw socket, as the mesh's inbound side serves): the path where every write of the
// engine goes through a TLS record.
func BenchmarkUnary1KiBTLS(b *testing.B) {
	ts := startGRPCServer(b, "a")
	cert, pool := selfSignedCert(b, "engine.test")
	addr, _ := startTLSProxy(b, Config{Router: fixedRouter(ts.addr), Logger: discardLogger()}, cert)
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "engine.test", NextProtos: []string{"h2"}})
	cc, err := grpc.NewClient("passthrough:///"+addr.String(), grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	runUnary(b, cc, 16)
}
