package h2

import (
	"sync"
	"time"
)

// deadlines enforces the deadlines (Route.Timeout, grpc-timeout) of one client connection's
// streams with one timer for all of them, over a min-heap ordered by deadline. A stream with a
// deadline costs a slot in the heap's slice, not a timer of its own: grpc-go sends grpc-timeout on
// every call that has a context deadline, so a timer per stream would be an allocation per
// request. The timer is armed for the earliest deadline; one that fires for a stream that has
// meanwhile ended finds nothing due and re-arms for the next.
type deadlines struct {
	mu    sync.Mutex
	h     []*stream // heap by stream.deadline; stream.dlPos is its index+1 there, 0 if absent
	timer *time.Timer
	at    time.Time // when timer fires; zero while stopped
	fire  func()
}

// add enforces s's deadline (set and never changed before s is shared).
func (d *deadlines) add(s *stream) {
	d.mu.Lock()
	d.h = append(d.h, s)
	s.dlPos = len(d.h)
	d.up(len(d.h) - 1)
	if d.h[0] == s && (d.at.IsZero() || s.deadline.Before(d.at)) {
		d.armLocked(s.deadline)
	}
	d.mu.Unlock()
}

// remove forgets s (it ended); the timer, if armed for s, finds nothing due and re-arms.
func (d *deadlines) remove(s *stream) {
	d.mu.Lock()
	if i := s.dlPos - 1; i >= 0 {
		d.deleteLocked(i)
		if len(d.h) == 0 && d.timer != nil {
			d.timer.Stop()
			d.at = time.Time{}
		}
	}
	d.mu.Unlock()
}

// due takes the streams whose deadline has passed out of the heap, appending them to list, and
// re-arms the timer for the next deadline.
func (d *deadlines) due(list []*stream) []*stream {
	now := time.Now()
	d.mu.Lock()
	d.at = time.Time{}
	for len(d.h) > 0 && !d.h[0].deadline.After(now) {
		list = append(list, d.h[0])
		d.deleteLocked(0)
	}
	if len(d.h) > 0 {
		d.armLocked(d.h[0].deadline)
	}
	d.mu.Unlock()
	return list
}

func (d *deadlines) armLocked(at time.Time) {
	d.at = at
	if d.timer == nil {
		d.timer = time.AfterFunc(time.Until(at), d.fire)
		return
	}
	d.timer.Reset(time.Until(at))
}

func (d *deadlines) deleteLocked(i int) {
	last := len(d.h) - 1
	d.h[i].dlPos = 0
	if i != last {
		d.h[i] = d.h[last]
		d.h[i].dlPos = i + 1
	}
	d.h[last] = nil
	d.h = d.h[:last]
	if i != last {
		d.down(i)
		d.up(i)
	}
}

func (d *deadlines) less(i, j int) bool { return d.h[i].deadline.Before(d.h[j].deadline) }

func (d *deadlines) swap(i, j int) {
	d.h[i], d.h[j] = d.h[j], d.h[i]
	d.h[i].dlPos, d.h[j].dlPos = i+1, j+1
}

func (d *deadlines) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !d.less(i, p) {
			return
		}
		d.swap(i, p)
		i = p
	}
}

func (d *deadlines) down(i int) {
	n := len(d.h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && d.less(r, l) {
			m = r
		}
		if !d.less(m, i) {
			return
		}
		d.swap(i, m)
		i = m
	}
}

// expireDue ends the connection's streams whose deadline passed (the timer's function).
func (cc *clientConn) expireDue() {
	var buf [8]*stream
	for _, s := range cc.dl.due(buf[:0]) {
		s.expire()
	}
}
