package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/dirty/state"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/scan"
)

// selectDirty runs the dirty poll that --dirty asks for. base:IMAGE compares
// with another image and needs no state; the other sources keep their
// cursor and file index in --state.
func selectDirty(ctx context.Context, c *cobra.Command, im *disk.Image, d *fsparse.Disk, f *scanFlags, rulesDigest string) (*dirty.Selection, error) {
	var sel *dirty.Selection
	if base, ok := strings.CutPrefix(f.dirty, "base:"); ok {
		bim, bd, err := openDisk(base)
		if err != nil {
			return nil, fmt.Errorf("--dirty base: %w", err)
		}
		if sel, err = dirty.Compare(ctx, bim, bd, im, d); err != nil {
			bim.Close()
			return nil, err
		}
		sel.OnClose(bim.Close)
	} else {
		if f.state == "" {
			return nil, usageError{fmt.Errorf("--dirty %s needs --state PATH (the poll state; the first poll scans everything)", f.dirty)}
		}
		db, err := state.Open(f.state)
		if err != nil {
			return nil, err
		}
		if sel, err = dirty.Select(ctx, im, d, f.dirty, db, rulesDigest); err != nil {
			db.Close()
			return nil, err
		}
		sel.OnClose(db.Close)
	}
	due := sel.Due()
	fmt.Fprintf(c.ErrOrStderr(), "vmscope: dirty source %s: %d changed files, %d to scan\n", sel.Source, len(sel.Changes), len(due))
	return sel, nil
}

// commitPoll records the verdicts and saves the poll state, but only when
// every due file was read: a file that failed must be due again next poll.
func commitPoll(c *cobra.Command, sel *dirty.Selection, res *scan.Result) error {
	if len(res.Errors) > 0 {
		fmt.Fprintf(c.ErrOrStderr(), "vmscope: poll state not updated: %d errors; the next poll redoes this one\n", len(res.Errors))
		return nil
	}
	matched := map[string]bool{}
	for _, f := range res.Findings {
		matched[f.Partition+":"+f.Path] = true
	}
	for _, ch := range sel.Due() {
		v := "clean"
		part := ch.Volume
		if part == "disk" {
			part = ""
		}
		if matched[part+":"+ch.Path] {
			v = "match"
		}
		sel.SetVerdict(ch, v)
	}
	return sel.CommitContext(c.Context())
}
