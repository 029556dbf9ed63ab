package check

import (
	"fmt"
	"testing"
)

func TestParseListeners(t *testing.T) {
	// Lines as this machine's kernel prints them: 0.0.0.0:7140 and 198.18.0.2:7190 listening,
	// one established connection; [::]:7140 and [fd00:de70::2]:8080 in tcp6.
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1BE4 00000000:0000 0A 00000000:00000000 00:00000000 00000000  2102        0 40001 1 0000000000000000 100 0 0 10 0
   1: 020012C6:1C16 00000000:0000 0A 00000000:00000000 00:00000000 00000000  2102        0 40002 1 0000000000000000 100 0 0 10 0
   2: 020012C6:D431 0A0013C6:0050 01 00000000:00000000 00:00000000 00000000     0        0 40003 1 0000000000000000 20 4 30 10 -1
`
	tcp6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1BE4 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  2102        0 50001 1 0000000000000000 100 0 0 10 0
   1: 70DE00FD000000000000000002000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 50002 1 0000000000000000 100 0 0 10 0
`
	var got []string
	for _, s := range append(parseListeners(tcp), parseListeners(tcp6)...) {
		got = append(got, fmt.Sprintf("%s/%d", s.addr, s.inode))
	}
	want := []string{"0.0.0.0:7140/40001", "198.18.0.2:7190/40002", "[::]:7140/50001", "[fd00:de70::2]:8080/50002"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
