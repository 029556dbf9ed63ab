package syncbuf

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

func TestConcurrentWritesAndReads(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 100 {
				fmt.Fprintf(&b, "writer=%d line=%d\n", w, i)
				_ = b.Len() // a reader at the same time; -race checks the locking
			}
		})
	}
	wg.Wait()
	if got := len(b.Lines("line=")); got != 400 {
		t.Fatalf("%d lines, want 400", got)
	}
	if got := b.Lines("writer=2 line=99"); !slices.Equal(got, []string{"writer=2 line=99"}) {
		t.Fatalf("Lines = %q", got)
	}
	if b.Len() != len(b.String()) {
		t.Fatalf("Len %d, String has %d bytes", b.Len(), len(b.String()))
	}
}
