package retry

import (
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func withdrawals(b *Budget, n int) int {
	ok := 0
	for range n {
		if b.Withdraw() {
			ok++
		}
	}
	return ok
}

func TestBudgetRatio(t *testing.T) {
	clock := &fakeClock{}
	b := NewBudget(0.2, 0, 10*time.Second, clock.Now)
	for range 1000 {
		b.Deposit()
	}
	if got := withdrawals(b, 1000); got != 200 {
		t.Fatalf("20%% of 1000 requests: %d retries allowed, want 200", got)
	}
	// More requests earn more retries.
	for range 100 {
		b.Deposit()
	}
	if got := withdrawals(b, 100); got != 20 {
		t.Fatalf("after 100 more requests: %d retries, want 20", got)
	}
}

func TestBudgetZeroAllowsNone(t *testing.T) {
	clock := &fakeClock{}
	b := NewBudget(0, 0, 10*time.Second, clock.Now)
	for range 1000 {
		b.Deposit()
	}
	if got := withdrawals(b, 10); got != 0 {
		t.Fatalf("a zero budget allowed %d retries", got)
	}
}

func TestBudgetMinimumRate(t *testing.T) {
	clock := &fakeClock{}
	b := NewBudget(0, 2, 10*time.Second, clock.Now)
	if got := withdrawals(b, 100); got != 20 {
		t.Fatalf("2/s over a 10 s window without requests: %d retries, want 20", got)
	}
}

// TestBudgetWindowSlides: requests and retries older than the window stop counting, a bucket at
// a time.
func TestBudgetWindowSlides(t *testing.T) {
	clock := &fakeClock{}
	b := NewBudget(0.5, 0, 10*time.Second, clock.Now)
	for range 100 {
		b.Deposit()
	}
	if got := withdrawals(b, 100); got != 50 {
		t.Fatalf("%d retries, want 50", got)
	}
	clock.Advance(5 * time.Second)
	if got := withdrawals(b, 10); got != 0 {
		t.Fatalf("half a window later the spent budget is still spent: %d retries", got)
	}
	clock.Advance(5*time.Second + time.Second)
	if r, rt := b.Window(); r != 0 || rt != 0 {
		t.Fatalf("a window later the counts are %d requests, %d retries; want none", r, rt)
	}
	for range 10 {
		b.Deposit()
	}
	if got := withdrawals(b, 10); got != 5 {
		t.Fatalf("a fresh window: %d retries, want 5", got)
	}
}

func TestBackoffIsBoundedWithJitter(t *testing.T) {
	seen := map[bool]bool{}
	for range 1000 {
		d := Backoff(3, 10*time.Millisecond, 25*time.Millisecond)
		if d < 0 || d > 25*time.Millisecond {
			t.Fatalf("backoff %v outside [0, 25ms]", d)
		}
		seen[d < 12*time.Millisecond] = true
	}
	if len(seen) != 2 {
		t.Fatal("no jitter")
	}
	if Backoff(1, 0, time.Second) != 0 {
		t.Fatal("a zero base waits")
	}
}

func BenchmarkDeposit(b *testing.B) {
	bu := NewBudget(0.2, 10, 10*time.Second, nil)
	for b.Loop() {
		bu.Deposit()
	}
}
