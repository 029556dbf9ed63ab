package mtls

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/detourmesh/detour/proxy/detect"
)

// captureHello returns the ClientHello a crypto/tls client with cfg sends, as the inbound
// proxy's sniffer sees it.
func captureHello(t *testing.T, cfg *tls.Config) *detect.ClientHello {
	t.Helper()
	client, server := net.Pipe()
	defer server.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(client, cfg).Handshake() // fails when the pipe closes
	}()
	defer func() { client.Close(); <-done }()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	var buf []byte
	tmp := make([]byte, 4096)
	for range 64 {
		n, err := server.Read(tmp)
		if err != nil {
			t.Fatalf("reading the ClientHello: %v", err)
		}
		buf = append(buf, tmp[:n]...)
		h, err := detect.ParseClientHello(buf)
		if errors.Is(err, detect.ErrIncomplete) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	t.Fatal("no complete ClientHello")
	return nil
}

func TestIsMeshOnRealClientHellos(t *testing.T) {
	p := newPKI(t)
	cases := []struct {
		name string
		cfg  *tls.Config
		want bool
	}{
		{"a proxy dialing detour/h2", ClientConfig(p.client, idStockdata, ALPNH2), true},
		{"a proxy dialing detour/tcp", ClientConfig(p.client, idStockdata, ALPNTCP), true},
		{"a client offering detour/h2 among others", &tls.Config{ServerName: "a.b", NextProtos: []string{"h2", ALPNH2}}, true},
		{"the application's own HTTPS", &tls.Config{ServerName: "stockdata.stocks.svc", NextProtos: []string{"h2", "http/1.1"}}, false},
		{"the application's TLS without ALPN", &tls.Config{ServerName: "db.internal"}, false},
		{"a look-alike protocol name", &tls.Config{ServerName: "a.b", NextProtos: []string{"detour-h2", "detour"}}, false},
		{"a TLS 1.2 client offering detour/tcp", &tls.Config{ServerName: "a.b", MaxVersion: tls.VersionTLS12, NextProtos: []string{ALPNTCP}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := captureHello(t, tc.cfg)
			if got := IsMesh(h); got != tc.want {
				t.Errorf("IsMesh(ALPN %q) = %v, want %v", h.ALPN, got, tc.want)
			}
		})
	}
	if IsMesh(nil) {
		t.Error("IsMesh(nil) = true")
	}
}
