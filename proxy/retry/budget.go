// Package retry holds the retry budget: the bound that keeps a proxy's retries from amplifying
// an overload (a service that fails because it is saturated must not get twice its traffic).
// It exists apart from the proxy so that its accounting can be tested on a fake clock.
//
// A Budget counts a service's original requests and its retries over a sliding window (ten
// buckets of a tenth of it each) and lets a retry through only while
//
//	retries < ratio × requests + minPerSecond × window
//
// as linkerd2-proxy's and Envoy's retry budgets do. Requests that provably never reached the
// application (a failed connection, a refused stream) are resent without withdrawing from it:
// they add no load to any application.
package retry

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

const buckets = 10

// Budget is one service's retry budget. Deposit and Withdraw are safe for concurrent use and
// never block; Deposit is a few atomic operations.
type Budget struct {
	ratio, minPerSecond float64
	window              time.Duration
	width               int64 // ns per bucket
	now                 func() int64
	b                   [buckets]bucket
}

type bucket struct {
	slot    atomic.Int64 // the window slot (now/width) the counts belong to
	reqs    atomic.Int64
	retries atomic.Int64
	_       [40]byte
}

// NewBudget returns a budget; now is the clock (nil: time.Now).
func NewBudget(ratio, minPerSecond float64, window time.Duration, now func() time.Time) *Budget {
	if window < buckets {
		window = buckets
	}
	b := &Budget{ratio: ratio, minPerSecond: minPerSecond, window: window, width: int64(window) / buckets}
	if now == nil {
		epoch := time.Now()
		b.now = func() int64 { return int64(time.Since(epoch)) + int64(window) }
	} else {
		epoch := now()
		b.now = func() int64 { return int64(now().Sub(epoch)) + int64(window) }
	}
	for i := range b.b {
		b.b[i].slot.Store(-buckets) // long expired
	}
	return b
}

// current returns the bucket for now, emptied if it held an older slot.
func (b *Budget) current() *bucket {
	slot := b.now() / b.width
	k := &b.b[slot%buckets]
	if old := k.slot.Load(); old != slot && k.slot.CompareAndSwap(old, slot) {
		// Racing adds may land in the old counts or be lost: an approximation of a few
		// requests, never a lasting drift.
		k.reqs.Store(0)
		k.retries.Store(0)
	}
	return k
}

// Deposit counts one original request.
func (b *Budget) Deposit() { b.current().reqs.Add(1) }

// Withdraw asks for one retry and counts it if the budget allows it.
func (b *Budget) Withdraw() bool {
	k := b.current()
	reqs, retries := b.sums()
	if float64(retries) >= b.ratio*float64(reqs)+b.minPerSecond*b.window.Seconds() {
		return false
	}
	k.retries.Add(1)
	return true
}

// sums adds up the buckets of the window ending now.
func (b *Budget) sums() (reqs, retries int64) {
	slot := b.now() / b.width
	for i := range b.b {
		k := &b.b[i]
		if s := k.slot.Load(); slot-s < buckets && s <= slot {
			reqs += k.reqs.Load()
			retries += k.retries.Load()
		}
	}
	return reqs, retries
}

// Window reports the requests and retries counted over the window ending now.
func (b *Budget) Window() (requests, retries int64) { return b.sums() }

// Backoff is the wait before retry number n (1 for the first): full jitter, a random wait
// between 0 and base×2^(n-1), capped at max, so retries of many clients do not land in step.
func Backoff(n int, base, max time.Duration) time.Duration {
	if base <= 0 || n < 1 {
		return 0
	}
	d := base << min(n-1, 20)
	if d > max || d <= 0 {
		d = max
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}
