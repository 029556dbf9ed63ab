package proxy

import "testing"

func TestConnectionLimitFollowsTheFileLimit(t *testing.T) {
	for _, tt := range []struct {
		files uint64
		want  int
	}{
		{1024, 128},        // (1024 - 256) / 6
		{20000, 3290},      // this machine's sandbox
		{65536, 10880},     // a common container limit
		{1 << 20, 100_000}, // containerd's default: the ceiling
		{1 << 62, 100_000}, // "unlimited"
		{100, 64},          // never below the floor
	} {
		if got := connectionsFor(tt.files); got != tt.want {
			t.Errorf("connectionsFor(%d) = %d, want %d", tt.files, got, tt.want)
		}
	}
}

func TestLiveConnsTellsWhenNoneIsLeft(t *testing.T) {
	l := newLiveConns()
	select {
	case <-l.idle():
	default:
		t.Fatal("not idle with no connection")
	}
	for i := range 2 {
		if !l.tryAdd(2) {
			t.Fatalf("connection %d refused below the limit of 2", i+1)
		}
	}
	if l.tryAdd(2) {
		t.Fatal("accepted past the limit")
	}
	idle := l.idle()
	l.done()
	select {
	case <-idle:
		t.Fatal("idle with a connection left")
	default:
	}
	l.done()
	select {
	case <-idle:
	default:
		t.Fatal("not idle once the last connection ended")
	}
	if !l.tryAdd(2) {
		t.Fatal("refused after connections ended")
	}
	select {
	case <-l.idle():
		t.Fatal("idle with a new connection")
	default:
	}
}

func TestSometimesCountsWhatItHolds(t *testing.T) {
	s := sometimes{every: 1 << 62}
	if n, ok := s.due(); !ok || n != 1 {
		t.Fatalf("first event: %d, %v", n, ok)
	}
	for range 3 {
		if _, ok := s.due(); ok {
			t.Fatal("let through within the period")
		}
	}
	s.last = s.last.Add(-s.every)
	if n, ok := s.due(); !ok || n != 4 {
		t.Fatalf("after the period: %d, %v; want the 3 held and this one", n, ok)
	}
}
