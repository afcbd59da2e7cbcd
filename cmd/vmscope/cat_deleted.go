package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/vmscope/vmscope/fsparse"
)

// errDeletedPath is the error of cat --deleted for a path that names no
// recoverable deleted file.
var errDeletedPath = errors.New("no deleted file of that name")

// runCatDeleted writes the content of the deleted file at path (a deleted
// name as ls --deleted lists it, never a live file) as a best effort: its
// freed inode must still map its blocks and none of them may be in use
// again. A note on errOut says the content is recovered, not read.
func runCatDeleted(ctx context.Context, image, path string, out, errOut io.Writer) error {
	im, d, err := openDisk(image)
	if err != nil {
		return err
	}
	defer im.Close()
	v, name, err := d.Resolve(path)
	if err != nil {
		return err
	}
	want := "/" + name
	scan, err := v.ScanDeleted(ctx, ".")
	if err != nil {
		return err
	}
	var cands []fsparse.Deleted
	for _, de := range scan.Deleted {
		if de.Path == want && !de.Realloc && de.Ino != 0 {
			cands = append(cands, de)
		}
	}
	switch {
	case len(cands) == 0:
		return fmt.Errorf("%s:%s: %w (ls -r --deleted lists them)", v.ID, want, errDeletedPath)
	case len(cands) > 1:
		return fmt.Errorf("%s:%s: %d deleted files of that name (inodes %d, %d...)", v.ID, want, len(cands), cands[0].Ino, cands[1].Ino)
	}
	f, err := v.OpenDeleted(cands[0].Ino)
	if err != nil {
		return fmt.Errorf("%s:%s: %w", v.ID, want, err)
	}
	fmt.Fprintf(errOut, "vmscope: %s:%s (deleted, inode %d): recovered from freed blocks, best effort\n", v.ID, want, cands[0].Ino)
	w := bufio.NewWriterSize(out, 1<<20)
	if _, err := io.Copy(w, io.NewSectionReader(f, 0, f.Size())); err != nil {
		return fmt.Errorf("%s:%s: %w", v.ID, want, err)
	}
	return w.Flush()
}
