package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/detourmesh/detour/internal/kubecluster"
)

const usage = `usage: kubecluster up|down|sweep [flags]
  up      start a cluster and keep it running until SIGTERM or Ctrl-C
  sweep   remove clusters whose owner is gone (crashed runs)`

func run(args []string) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	root := fs.String("root", kubecluster.DefaultRoot, "directory of the clusters' state directories")
	name := fs.String("name", "dev", "cluster name")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "up":
		return up(*root, *name)
	case "sweep":
		removed, err := kubecluster.Sweep(*root)
		for _, r := range removed {
			fmt.Println("removed", r)
		}
		return err
	default:
		return errors.New(usage)
	}
}

func up(root, name string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c, err := kubecluster.Start(ctx, kubecluster.Options{Root: root, Name: name, Logger: log})
	if err != nil {
		return err
	}
	fmt.Printf("export KUBECONFIG=%s\nkubectl: %s/kubectl\n", c.Kubeconfig, c.BinDir)
	<-ctx.Done()
	return c.Stop()
}
