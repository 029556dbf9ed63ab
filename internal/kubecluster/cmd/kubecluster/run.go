package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/detourmesh/detour/internal/kubecluster"
	"github.com/detourmesh/detour/internal/kubedemo"
)

const usage = `usage: kubecluster up|down|sweep|demo [flags]
  up      start a cluster; with --detach return once it is ready and leave it running
  down    stop the cluster (and remove what a crashed one left)
  sweep   remove clusters whose owner is gone (crashed runs)
  demo    the StockKube workflow on a one-node cluster of its own (make demo-k8s), until Ctrl-C`

func run(args []string) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	root := fs.String("root", kubecluster.DefaultRoot, "directory of the clusters' state directories")
	name := fs.String("name", "dev", "cluster name")
	node := fs.Bool("node", false, "start the one-node cluster, not only the control plane (needs root and make image)")
	detach := fs.Bool("detach", false, "up: run the cluster in the background, return when it is ready")
	duration := fs.Duration("duration", 0, "demo: keep the cluster this long after the last step, then remove it (0: until Ctrl-C)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "up":
		if *detach {
			return upDetached(*root, *name, args[1:])
		}
		return up(*root, *name, *node)
	case "down":
		return down(*root, *name)
	case "demo":
		if *name == "dev" {
			*name = "demo" // beside a make cluster, not instead of it
		}
		return demo(*root, *name, *duration)
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

// up runs the cluster until SIGINT or SIGTERM: this process owns it (and its API server
// relay), and stops it on the way out.
func up(root, name string, node bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	level := slog.LevelInfo
	if os.Getenv("KUBECLUSTER_DEBUG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	opts := kubecluster.Options{Root: root, Name: name, Logger: log, Node: node, DNS: node}
	if node {
		imgs, err := kubecluster.RepoImages()
		if err != nil {
			return err
		}
		opts.Images = imgs
	}
	c, err := kubecluster.Start(ctx, opts)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "usage"), []byte(usageText(c)), 0o644); err != nil {
		c.Stop()
		return err
	}
	fmt.Print(usageText(c))
	<-ctx.Done()
	log.Info("stopping")
	return c.Stop()
}

func usageText(c *kubecluster.Cluster) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cluster %s ready in %s", c.Name, c.Timings.Total.Round(time.Millisecond))
	if c.NodeNS != nil {
		fmt.Fprintf(&b, " (node %s Ready, DNS at %s; its network namespace: %s)", kubecluster.NodeName, kubecluster.DNSServiceIP, c.NodeNS.Name)
	}
	fmt.Fprintf(&b, "\n  export KUBECONFIG=%s\n  export PATH=%s:$PATH   # kubectl %s\n", c.Kubeconfig, c.BinDir, kubecluster.Version)
	if c.NodeNS != nil {
		fmt.Fprintf(&b, "  pods are reachable from the node: ip netns exec %s curl http://POD_IP:PORT/\n", c.NodeNS.Name)
	}
	fmt.Fprintf(&b, "  logs: %s/logs/\n  remove it: make cluster-down\n", c.Dir)
	return b.String()
}

// upDetached starts `up` again in a session of its own, its output in ROOT/NAME.log, and
// returns once the cluster is ready (the child writes its usage file) or the child failed.
func upDetached(root, name string, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(root, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	var childArgs []string
	for _, a := range args {
		if a != "--detach" && a != "-detach" {
			childArgs = append(childArgs, a)
		}
	}
	cmd := exec.Command(self, append([]string{"up"}, childArgs...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	usage := filepath.Join(root, name, "usage")
	deadline := time.After(3 * time.Minute)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("the cluster did not start (%v):\n%s", err, b)
		case <-deadline:
			return fmt.Errorf("the cluster was not ready after 3 minutes; see %s, and make cluster-down", logPath)
		case <-tick.C:
			if b, err := os.ReadFile(usage); err == nil {
				fmt.Print(string(b))
				fmt.Printf("  owner: pid %d, its log %s\n", cmd.Process.Pid, logPath)
				return nil
			}
		}
	}
}

// down asks the cluster's owner to stop it and waits, then sweeps what is left (all of it
// if the owner had crashed).
func down(root, name string) error {
	dir := filepath.Join(root, name)
	if b, err := os.ReadFile(filepath.Join(dir, "owner")); err == nil {
		var pid int
		var start uint64
		if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &start); err == nil && ownerAlive(pid, start) {
			if err := syscall.Kill(pid, syscall.SIGTERM); err == nil {
				deadline := time.Now().Add(time.Minute)
				for ownerAlive(pid, start) && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}
	}
	removed, err := kubecluster.Sweep(root)
	for _, r := range removed {
		fmt.Println("removed what was left of", r)
	}
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); err == nil {
		return fmt.Errorf("%s is still there: its owner did not stop within a minute", dir)
	}
	os.Remove(filepath.Join(root, name+".log"))
	fmt.Printf("cluster %s removed\n", name)
	return nil
}

// ownerAlive reports whether pid still runs with the start time of the owner file.
func ownerAlive(pid int, start uint64) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	return len(f) > 19 && f[0] != "Z" && f[19] == fmt.Sprint(start)
}

// demo runs kubedemo with this repository's binaries (bin/), manifests and images, until
// SIGINT or SIGTERM (or --duration), and removes its cluster on the way out.
func demo(root, name string, duration time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	imgs, err := kubecluster.RepoImages()
	if err != nil {
		return err
	}
	repo := filepath.Dir(filepath.Dir(filepath.Dir(imgs[0]))) // REPO/bin/images/X.tar
	err = kubedemo.Run(ctx, kubedemo.Options{
		Bin: filepath.Join(repo, "bin"), Manifests: filepath.Join(repo, "deploy", "examples", "stockkube"),
		Images: imgs, Name: name, Root: root, Duration: duration, Out: os.Stdout,
	})
	if err == context.Canceled {
		fmt.Println("interrupted: the cluster is removed")
		return nil
	}
	return err
}
