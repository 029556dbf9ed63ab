package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detourmesh/detour/internal/syncbuf"
)

// verify checks leaf with its chain against c's trust anchor, as a peer does.
func verify(t *testing.T, c *CA, leaf *x509.Certificate, chain [][]byte) error {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(c.TrustAnchor())
	for _, raw := range chain {
		ic, err := x509.ParseCertificate(raw)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

func TestRotateIssuerKeepsTheAnchorAndOldCertificatesValid(t *testing.T) {
	running, dir := newCA(t)
	oldLeaf, oldChain, err := running.Sign(csrFor(t, p256(t), nil), stockdata, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	oldIssuer := running.Issuer()

	rotated, err := RotateIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Issuer().Equal(oldIssuer) || rotated.Issuer().PublicKey.(*ecdsa.PublicKey).Equal(oldIssuer.PublicKey) {
		t.Fatal("the rotated issuer has the old certificate or key")
	}
	if !rotated.TrustAnchor().Equal(running.TrustAnchor()) {
		t.Fatal("rotating the issuer changed the trust anchor")
	}
	for _, name := range []string{IssuerCertFile + newSuffix, IssuerKeyFile + newSuffix} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s left behind", name)
		}
	}
	if st, err := os.Stat(filepath.Join(dir, IssuerKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("issuer key mode: %v %v, want 0600", st.Mode(), err)
	}

	// A controller running on dir signs with the new issuer once it reloads.
	if changed, err := running.ReloadIssuer(dir); err != nil || !changed {
		t.Fatalf("ReloadIssuer = %v, %v; want a change", changed, err)
	}
	if changed, err := running.ReloadIssuer(dir); err != nil || changed {
		t.Fatalf("ReloadIssuer again = %v, %v; want no change", changed, err)
	}
	newLeaf, newChain, err := running.Sign(csrFor(t, p256(t), nil), stockdata, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := newLeaf.CheckSignatureFrom(rotated.Issuer()); err != nil {
		t.Fatalf("a certificate signed after the reload is not from the new issuer: %v", err)
	}
	// Peers trust the anchor only: certificates of both issuers verify.
	if err := verify(t, running, oldLeaf, oldChain); err != nil {
		t.Errorf("a certificate of the old issuer no longer verifies: %v", err)
	}
	if err := verify(t, running, newLeaf, newChain); err != nil {
		t.Errorf("a certificate of the new issuer does not verify: %v", err)
	}
}

func TestRotateIssuerRefuses(t *testing.T) {
	t.Run("without the anchor key", func(t *testing.T) {
		_, dir := newCA(t)
		os.Remove(filepath.Join(dir, AnchorKeyFile)) // taken offline
		before, _ := os.ReadFile(filepath.Join(dir, IssuerCertFile))
		if _, err := RotateIssuer(dir); err == nil || !strings.Contains(err.Error(), "trust anchor's key") {
			t.Fatalf("err = %v, want one asking for the trust anchor's key", err)
		}
		if after, _ := os.ReadFile(filepath.Join(dir, IssuerCertFile)); string(after) != string(before) {
			t.Fatal("a refused rotation changed the issuer")
		}
	})
	t.Run("with another anchor's key", func(t *testing.T) {
		_, dir := newCA(t)
		_, other := newCA(t)
		key, _ := os.ReadFile(filepath.Join(other, AnchorKeyFile))
		os.WriteFile(filepath.Join(dir, AnchorKeyFile), key, 0o600)
		if _, err := RotateIssuer(dir); err == nil || !strings.Contains(err.Error(), "does not hold the key") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestReloadIssuerRefusesAnotherAnchor(t *testing.T) {
	running, _ := newCA(t)
	_, other := newCA(t)
	issuer := running.Issuer()
	if _, err := running.ReloadIssuer(other); err == nil || !strings.Contains(err.Error(), "another trust anchor") {
		t.Fatalf("err = %v", err)
	}
	if !running.Issuer().Equal(issuer) {
		t.Fatal("a refused reload replaced the issuer")
	}
}

func TestAnInterruptedRotationIsNamedAndFinishedByRunningItAgain(t *testing.T) {
	_, dir := newCA(t)
	crt := filepath.Join(dir, IssuerCertFile)
	old, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RotateIssuer(dir); err != nil {
		t.Fatal(err)
	}
	// The state of a rotation stopped between its two renames: the new key in place, its
	// certificate still beside it, the old certificate in place.
	if err := os.Rename(crt, crt+newSuffix); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crt, old, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "rotation was interrupted") {
		t.Fatalf("Load = %v, want it to name the interrupted rotation", err)
	}
	if _, err := RotateIssuer(dir); err != nil {
		t.Fatalf("running the rotation again: %v", err)
	}
	if _, err := Load(dir); err != nil {
		t.Fatalf("after running it again: %v", err)
	}
}

func TestAFailedRotationLeavesTheOldIssuer(t *testing.T) {
	c, dir := newCA(t)
	// The certificate's new file cannot be written: a non-empty directory in its place.
	blocker := filepath.Join(dir, IssuerCertFile+newSuffix)
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := RotateIssuer(dir); err == nil || !strings.Contains(err.Error(), "old issuer is unchanged") {
		t.Fatalf("RotateIssuer = %v, want a failure that keeps the old issuer", err)
	}
	after, err := Load(dir)
	if err != nil {
		t.Fatalf("the CA no longer loads after a failed rotation: %v", err)
	}
	if !after.Issuer().Equal(c.Issuer()) {
		t.Fatal("a failed rotation replaced the issuer")
	}
	if _, err := os.Stat(filepath.Join(dir, IssuerKeyFile+newSuffix)); err == nil {
		t.Error("the new key was left behind")
	}
}

func TestFollowIssuerPicksUpARotation(t *testing.T) {
	running, dir := newCA(t)
	before := running.Issuer()
	var logs syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		running.FollowIssuer(ctx, dir, 10*time.Millisecond, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		close(done)
	}()
	defer func() { cancel(); <-done }()
	// A broken directory is logged once and changes nothing.
	key := filepath.Join(dir, IssuerKeyFile)
	saved, _ := os.ReadFile(key)
	os.WriteFile(key, []byte("not a key"), 0o600)
	for deadline := time.Now().Add(5 * time.Second); len(logs.Lines("issuer not reloaded")) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a failed reload was not logged")
		}
	}
	for deadline := time.Now().Add(5 * time.Second); len(logs.Lines("issuer still not reloaded")) < 5; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the failing reload was not polled again")
		}
	}
	if n := len(logs.Lines("issuer not reloaded")); n != 1 {
		t.Errorf("the same failure was logged %d times, want once", n)
	}
	os.WriteFile(key, saved, 0o600)
	rotated, err := RotateIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !running.Issuer().Equal(rotated.Issuer()); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the running CA did not pick up the new issuer")
		}
	}
	if running.Issuer().Equal(before) || len(logs.Lines("issuer rotated")) != 1 {
		t.Errorf("issuer changed: %v; logs:\n%s", !running.Issuer().Equal(before), logs.String())
	}
}
