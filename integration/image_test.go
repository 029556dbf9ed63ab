package integration

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/detourmesh/detour/netns/nstest"
)

// imageDir holds the archives of `make image`: $DETOUR_IMAGES, or bin/images.
func imageDir() string {
	if d := os.Getenv("DETOUR_IMAGES"); d != "" {
		return d
	}
	return filepath.Join("..", "bin", "images")
}

// imageConfig is the part of an image's configuration the tests check.
type imageConfig struct {
	Config struct {
		User       string
		Entrypoint []string
		Labels     map[string]string
	} `json:"config"`
}

// unpackImage reads a docker-archive as `make image` writes it and unpacks its layers in
// order into a new directory (the images have no deletions, so no whiteouts to apply).
func unpackImage(t *testing.T, name string) (root string, cfg imageConfig) {
	t.Helper()
	path := filepath.Join(imageDir(), name+".tar")
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("DETOUR_REQUIRE_ROOT") == "1" {
			t.Fatalf("no image archive %s (make image builds it): %v", path, err)
		}
		t.Skipf("no image archive %s (make image builds it)", path)
	}
	archive := t.TempDir()
	if out, err := exec.Command("tar", "-C", archive, "-xf", path).CombinedOutput(); err != nil {
		t.Fatalf("unpacking %s: %v\n%s", path, err, out)
	}
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	readJSON(t, filepath.Join(archive, "manifest.json"), &manifest)
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 {
		t.Fatalf("%s: manifest %+v, want one image with one name", path, manifest)
	}
	readJSON(t, filepath.Join(archive, manifest[0].Config), &cfg)
	root = t.TempDir()
	for _, l := range manifest[0].Layers {
		if err := untar(filepath.Join(archive, l), root); err != nil {
			t.Fatalf("%s: layer %s: %v", path, l, err)
		}
	}
	return root, cfg
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func untar(path, dst string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean("/" + h.Name)
		if strings.Contains(filepath.Base(name), ".wh.") {
			return errors.New("whiteouts are not expected in these images: " + h.Name)
		}
		p := filepath.Join(dst, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
			if err == nil {
				err = os.Chmod(p, os.FileMode(h.Mode&0o777)|modeBits(h.Mode))
			}
		case tar.TypeSymlink:
			os.Remove(p)
			err = os.Symlink(h.Linkname, p)
		case tar.TypeLink:
			err = os.Link(filepath.Join(dst, filepath.Clean("/"+h.Linkname)), p)
		case tar.TypeReg:
			var out *os.File
			out, err = os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, os.FileMode(h.Mode&0o777))
			if err == nil {
				_, err = io.Copy(out, tr)
				out.Close()
			}
		}
		if err != nil {
			return err
		}
	}
}

func modeBits(m int64) os.FileMode {
	var b os.FileMode
	if m&0o1000 != 0 {
		b |= os.ModeSticky
	}
	return b
}

// TestImage checks the image `make image` builds from the Dockerfile as a user of it would:
// its user and entrypoint, that it holds iptables with both backends and no shell or package
// manager, and that `detour init` from it, run as an init container runs it (root, in a
// pod's namespace, the image as its root file system), installs and proves its redirect with
// each backend.
func TestImage(t *testing.T) {
	root, cfg := unpackImage(t, "detour")
	if cfg.Config.User != "2102:2102" {
		t.Errorf("image user %q, want 2102:2102 (the proxy's UID)", cfg.Config.User)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/detour"}) {
		t.Errorf("image entrypoint %q, want [/usr/local/bin/detour]", cfg.Config.Entrypoint)
	}
	for _, l := range []string{"org.opencontainers.image.title", "org.opencontainers.image.source", "org.opencontainers.image.version"} {
		if cfg.Config.Labels[l] == "" {
			t.Errorf("image has no label %s", l)
		}
	}
	for _, f := range []string{"/usr/local/bin/detour", "/usr/sbin/iptables", "/etc/passwd"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("image lacks %s: %v", f, err)
		}
	}
	for _, f := range []string{"/bin/sh", "/usr/bin/bash", "/usr/bin/apt-get", "/usr/bin/dpkg"} {
		if _, err := os.Lstat(filepath.Join(root, f)); err == nil {
			t.Errorf("image holds %s: it should hold detour and iptables only", f)
		}
	}

	nstest.RequireRoot(t)
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			ns := nstest.New(t)
			err := ns.Do(func() error {
				// A pod's eth0 (a veth whose peer stays in the namespace: no dummy
				// driver in every kernel).
				d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}
				if err := netlink.LinkAdd(d); err != nil {
					return err
				}
				addr, _ := netlink.ParseAddr("198.18.0.9/24")
				if err := netlink.AddrAdd(d, addr); err != nil {
					return err
				}
				for _, name := range []string{"peer0", "eth0"} {
					l, err := netlink.LinkByName(name)
					if err == nil {
						err = netlink.LinkSetUp(l)
					}
					if err != nil {
						return err
					}
				}
				// A default route, as a pod has (the outbound proof dials off the pod).
				return netlink.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Gw: net.ParseIP("198.18.0.1")})
			})
			if err != nil {
				t.Fatal(err)
			}
			// Only the install and its proof: the rules go with the namespace. (Removal with
			// iptables-legacy lists the tables in /proc, which a bare chroot lacks; a
			// container has it.)
			for _, args := range [][]string{{"init", "--backend", backend, "--ipv6", "off"}} {
				cmd := exec.Command("/usr/local/bin/detour", args...)
				cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
				cmd.Dir = "/"
				cmd.Env = []string{"PATH=/usr/local/bin:/usr/sbin:/usr/bin"}
				var out strings.Builder
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := ns.Run(cmd); err != nil {
					t.Fatalf("detour %s from the image: %v\n%s", strings.Join(args, " "), err, out.String())
				}
				t.Logf("detour %s:\n%s", strings.Join(args, " "), out.String())
			}
		})
	}
}

// TestControllerImage checks the controller's image (the Dockerfile's stage "controller") as
// its Deployment (deploy/deployment.yaml) runs it: user 2103, entrypoint detour-controller,
// nothing but the binary (no shell, no iptables).
func TestControllerImage(t *testing.T) {
	root, cfg := unpackImage(t, "detour-controller")
	if cfg.Config.User != "2103:2103" {
		t.Errorf("image user %q, want 2103:2103 (deploy/deployment.yaml's runAsUser)", cfg.Config.User)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/detour-controller"}) {
		t.Errorf("image entrypoint %q, want [/usr/local/bin/detour-controller]", cfg.Config.Entrypoint)
	}
	if cfg.Config.Labels["org.opencontainers.image.title"] != "detour-controller" {
		t.Errorf("image labels %v, want title detour-controller", cfg.Config.Labels)
	}
	var files []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(p, root))
		}
		return nil
	})
	if !slices.Equal(files, []string{"/usr/local/bin/detour-controller"}) {
		t.Errorf("image holds %q, want the controller's binary alone", files)
	}
}
