// Command kubecluster is the dev tool behind `make cluster` and `make cluster-down`: it
// starts a kubecluster cluster that outlives the command, and removes it (or what a crashed
// one left) again.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kubecluster:", err)
		os.Exit(1)
	}
}
