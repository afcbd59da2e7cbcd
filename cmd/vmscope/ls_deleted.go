package main

import (
	"context"
	"fmt"
	"io"
	"path"
	"unicode/utf8"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/output"
)

// lsDeleted is the JSON form of a deleted name or orphan inode.
type lsDeleted struct {
	fsparse.Deleted
	PathRaw []byte `json:"path_raw,omitempty"`
}

// runLsDeleted lists the deleted names (--deleted) and the inodes in use
// that no name names (--orphans) of the filesystems of image, below path
// (recursively with -r, else the directory's own deleted names only).
func runLsDeleted(ctx context.Context, image string, paths []string, f *lsFlags, out, errOut io.Writer) error {
	im, d, targets, err := openLsTargets(image, paths)
	if err != nil {
		return err
	}
	defer im.Close()
	var probs output.Counter
	for _, p := range d.Problems {
		probs.Add(p)
		fmt.Fprintf(errOut, "vmscope: %v\n", p)
	}
	s := output.NewStream(out, f.format)
	prefix := len(d.Volumes) > 1
	for _, t := range targets {
		if t.v.Ext4() == nil {
			msg := fmt.Sprintf("%s: %s: deleted files are found on ext2/3/4 only", t.v.ID, t.v.Type)
			probs.Add(msg)
			fmt.Fprintf(errOut, "vmscope: %s\n", msg)
			continue
		}
		v, err := t.v.WithInodeTables(ctx, fsparse.TablesBudget)
		if err != nil {
			return err
		}
		scan, err := v.ScanDeleted(ctx, t.name)
		if err != nil {
			return err
		}
		for _, p := range scan.Problems {
			probs.Add(p)
			fmt.Fprintf(errOut, "vmscope: %v\n", p)
		}
		start := fsparse.CleanPath("/" + t.name)
		dir := "/" + start
		if start == "." {
			dir = "/"
		}
		var list []fsparse.Deleted
		if f.deleted {
			for _, de := range scan.Deleted {
				if !f.recursive && path.Dir(de.Path) != dir {
					continue
				}
				list = append(list, de)
			}
		}
		if f.orphans {
			list = append(list, scan.Unlinked...)
		}
		for _, de := range list {
			if err := writeDeleted(s, de, f.long, prefix); err != nil {
				return err
			}
		}
	}
	if err := s.Close(); err != nil {
		return err
	}
	return probs.Err()
}

// deletedMark is how fls marks a deleted name.
func deletedMark(de fsparse.Deleted) string {
	switch {
	case de.Unlinked && de.OrphanList:
		return " (unlinked, orphan list)"
	case de.Unlinked:
		return " (unlinked)"
	case de.Realloc:
		return " (deleted-realloc)"
	}
	return " (deleted)"
}

func writeDeleted(s *output.Stream, de fsparse.Deleted, long, volPrefix bool) error {
	je := lsDeleted{Deleted: de}
	if !utf8.ValidString(de.Path) {
		je.PathRaw = []byte(de.Path)
	}
	return s.Write(je, func(w io.Writer) {
		p := printable(de.Path)
		if volPrefix {
			p = de.Volume + ":" + p
		}
		p += deletedMark(de)
		if !long {
			fmt.Fprintln(w, p)
			return
		}
		mode := "----------"
		if de.MetaKnown {
			mode = modeString(de.Mode)
		}
		fmt.Fprintf(w, "%8d %s %3d %5d %5d %12d %s %s\n", de.Ino, mode, de.Links, de.Uid, de.Gid, de.Size, de.Mtime.UTC().Format("2006-01-02 15:04:05.000000000"), p)
	})
}
