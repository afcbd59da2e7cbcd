package live

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmscope/vmscope/vmi/qemu"
)

// Released is what Release removed and merged.
type Released struct {
	// Removed names the objects removed: "export vmscope-export", "job
	// vmscope-backup", "node vmscope-fleece", "file PATH", "nbd server
	// PATH".
	Removed []string
	// Merged names the orphaned tracking bitmaps merged forward
	// ("NAME into NAME") and removed.
	Merged []string
}

// Release removes what a killed poll left in QEMU (m): the vmscope-
// exports, block jobs and nodes (and the fleecing files), the NBD server
// on a vmscope socket in dir (os.TempDir() when ""); and merges each
// orphaned tracking bitmap (disabled by a poll that never removed it)
// into the enabled one of its state, so the next poll misses no write.
// It changes nothing else; with nothing left behind it changes nothing.
func Release(ctx context.Context, m qemu.Monitor, dir string) (*Released, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	rel := &Released{}
	left, err := findLeftovers(ctx, m)
	if err != nil {
		return rel, err
	}
	var errs []error
	for _, e := range left.Exports {
		if err := qmp(ctx, m, "block-export-del", map[string]any{"id": e, "mode": "hard"}, nil); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := waitGone(ctx, "export "+e, exportGone(ctx, m, e)); err != nil {
			errs = append(errs, err)
			continue
		}
		rel.Removed = append(rel.Removed, "export "+e)
	}
	for _, j := range left.Jobs {
		if err := qmp(ctx, m, "block-job-cancel", map[string]any{"device": j, "force": true}, nil); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := waitGone(ctx, "job "+j, jobGone(ctx, m, j)); err != nil {
			errs = append(errs, err)
			continue
		}
		rel.Removed = append(rel.Removed, "job "+j)
	}
	for _, n := range left.Nodes {
		if err := qmp(ctx, m, "blockdev-del", map[string]any{"node-name": n.Name}, nil); err != nil {
			errs = append(errs, err)
			continue
		}
		rel.Removed = append(rel.Removed, "node "+n.Name)
		if strings.HasPrefix(filepath.Base(n.File), Prefix+"fleece-") {
			if err := os.Remove(n.File); err == nil {
				rel.Removed = append(rel.Removed, "file "+n.File)
			} else if !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
	}
	ds, err := Disks(ctx, m)
	if err != nil {
		return rel, errors.Join(append(errs, err)...)
	}
	// The scratch directories: dir, and those of the fleecing files.
	dirs := []string{dir}
	for _, n := range left.Nodes {
		if n.File != "" && !slices.Contains(dirs, filepath.Dir(n.File)) {
			dirs = append(dirs, filepath.Dir(n.File))
		}
	}
	for _, d := range ds {
		for _, dir := range dirs {
			sock := sockPath(dir, d)
			if !fileExists(sock) {
				continue
			}
			err := qmp(ctx, m, "nbd-server-stop", nil, nil)
			if err != nil && !isQMPError(err, "not running") {
				errs = append(errs, err)
			} else {
				os.Remove(sock)
				rel.Removed = append(rel.Removed, "nbd server "+sock)
			}
		}
		// Orphans, per state tag.
		cur := map[string]string{}
		for _, b := range d.Bitmaps {
			if t, _, ok := parseTrack(b.Name); ok && b.Recording && !b.Inconsistent {
				cur[t] = b.Name
			}
		}
		for _, b := range d.Bitmaps {
			t, _, ok := parseTrack(b.Name)
			if !ok || b.Recording || b.Inconsistent || cur[t] == "" {
				continue
			}
			if err := mergeForward(ctx, m, d.Node, b.Name, cur[t]); err != nil {
				errs = append(errs, err)
				continue
			}
			rel.Merged = append(rel.Merged, fmt.Sprintf("%s into %s", b.Name, cur[t]))
		}
	}
	return rel, errors.Join(errs...)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
