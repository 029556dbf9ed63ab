package kubecluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// RepoImages returns the image archives `make image` writes (bin/images/*.tar of the
// repository holding the working directory), which a node cluster imports.
func RepoImages() ([]string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil, errors.New("finding the image archives: not inside the repository (no go.mod above the working directory)")
		}
		dir = parent
	}
	imgs, _ := filepath.Glob(filepath.Join(dir, "bin", "images", "*.tar"))
	if len(imgs) == 0 {
		return nil, fmt.Errorf("no image archives in %s: run make image", filepath.Join(dir, "bin", "images"))
	}
	return imgs, nil
}
