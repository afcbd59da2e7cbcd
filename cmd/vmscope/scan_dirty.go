package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/dirty/state"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
)

// parseSource turns a dirty source as the flags give it (auto, cow,
// bitmap:NAME, hash or base:IMAGE) into the dirty.Source of image im. A
// base image it opens is closed by closer.
func parseSource(spec string, im *disk.Image) (src dirty.Source, closer func() error, err error) {
	closer = func() error { return nil }
	switch bm, isBitmap := strings.CutPrefix(spec, "bitmap:"); {
	case spec == "" || spec == "auto":
		return dirty.Auto(im), closer, nil
	case spec == "cow":
		src, err = dirty.Cow(im)
	case isBitmap:
		src, err = dirty.Bitmap(im, bm)
	case spec == "hash":
		src = dirty.Hash(im)
	case strings.HasPrefix(spec, "base:"):
		bim, bd, err := openDisk(strings.TrimPrefix(spec, "base:"))
		if err != nil {
			return nil, nil, fmt.Errorf("--dirty base: %w", err)
		}
		return dirty.Base(bim, bd, im), bim.Close, nil
	default:
		return nil, nil, usageError{fmt.Errorf("dirty source %q: want auto, cow, bitmap:NAME, hash or base:IMAGE", spec)}
	}
	return src, closer, err
}

// pollDirty runs the dirty poll of source spec on image im (disk d). A
// source that compares with an older image needs no state; the others keep
// their cursor and file index in the state file statePath.
func pollDirty(ctx context.Context, im *disk.Image, d *fsparse.Disk, spec, statePath, rulesDigest string) (*dirty.Selection, error) {
	src, closeSrc, err := parseSource(spec, im)
	if err != nil {
		return nil, err
	}
	var st dirty.Store
	closeState := func() error { return nil }
	if _, ok := src.(dirty.Reference); !ok {
		if statePath == "" {
			closeSrc()
			return nil, usageError{fmt.Errorf("--dirty %s needs --state PATH (the poll state; the first poll scans everything)", spec)}
		}
		db, err := state.Open(statePath)
		if err != nil {
			closeSrc()
			return nil, err
		}
		st, closeState = db, db.Close
	}
	sel, err := dirty.Select(ctx, im, d, src, st, rulesDigest)
	if err != nil {
		closeState()
		closeSrc()
		return nil, err
	}
	sel.OnClose(closeSrc)
	sel.OnClose(closeState)
	return sel, nil
}

// selectDirty runs the dirty poll that --dirty asks for.
func selectDirty(ctx context.Context, errOut io.Writer, im *disk.Image, d *fsparse.Disk, f *scanFlags, rulesDigest string) (*dirty.Selection, error) {
	sel, err := pollDirty(ctx, im, d, f.dirty, f.state, rulesDigest)
	if err != nil {
		return nil, err
	}
	due := sel.Due()
	fmt.Fprintf(errOut, "vmscope: dirty source %s: %d changed files, %d to scan\n", sel.Source, len(sel.Changes), len(due))
	return sel, nil
}
