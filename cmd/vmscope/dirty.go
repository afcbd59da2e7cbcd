package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
)

type dirtyFlags struct {
	base, bitmap, state, source, format string
}

func newDirtyCmd() *cobra.Command {
	var f dirtyFlags
	c := &cobra.Command{
		Use:   "dirty IMAGE [--base IMAGE | --bitmap NAME | --state PATH]",
		Short: "List the files changed since a base image or the last poll, and why",
		Long: `List the guest files that changed, found from the dirty blocks up:
  --base IMAGE   against an older image of the same disk (shared layers are skipped)
  (no flag)      an overlay against its backing file (copy-on-write)
  --state PATH   since the last poll recorded in PATH (bbolt); the first poll lists
                 every file and fills the state; --source picks the dirty source
                 (auto, cow, bitmap:NAME, hash); --bitmap NAME is --source bitmap:NAME
vmscope never writes to the image, so an overlay and a bitmap are cumulative;
the state keeps a hash of every 4 KiB block as the last poll saw it, so each
poll reports only what changed since. To keep a bitmap small, rotate it as
incremental backup does: a QMP transaction of block-dirty-bitmap-add (new,
persistent) and block-dirty-bitmap-disable (old), poll the old one, then
block-dirty-bitmap-remove it; poll the new one next time. A bitmap that was
not enabled at the last poll, or holds less than then, makes a full pass.`,
		Args: rangeArgs(1, 1),
		RunE: func(c *cobra.Command, args []string) error { return runDirty(c, args[0], &f) },
	}
	fl := c.Flags()
	fl.StringVar(&f.base, "base", "", "older image of the same disk to compare with")
	fl.StringVar(&f.bitmap, "bitmap", "", "persistent dirty bitmap of the image to use (needs --state)")
	fl.StringVar(&f.state, "state", "", "poll state file (created when missing)")
	fl.StringVar(&f.source, "source", "auto", "dirty source with --state: auto, cow, bitmap:NAME or hash")
	fl.StringVar(&f.format, "format", "table", "output format: table, json or ndjson")
	return c
}

func runDirty(c *cobra.Command, image string, f *dirtyFlags) error {
	if err := checkFormat(f.format, "table", "json", "ndjson"); err != nil {
		return err
	}
	if f.base != "" && (f.state != "" || f.bitmap != "") {
		return usageError{fmt.Errorf("--base compares two images; it does not go with --state or --bitmap")}
	}
	if f.bitmap != "" {
		if f.state == "" {
			return usageError{fmt.Errorf("--bitmap needs --state: a bitmap is cumulative, and the state says what was already seen")}
		}
		f.source = "bitmap:" + f.bitmap
	}
	im, d, err := openDisk(image)
	if err != nil {
		return err
	}
	defer im.Close()
	spec := f.source
	switch {
	case f.base != "":
		spec = "base:" + f.base
	case f.state == "":
		ls := im.Layers()
		if len(ls) < 2 {
			return usageError{fmt.Errorf("%s is a single %s file: give --base IMAGE, or --state PATH (bitmap or hash source)", image, ls[0].Format())}
		}
		spec = "base:" + ls[1].Name() // an overlay against its backing file
	case strings.HasPrefix(spec, "base:"):
		return usageError{fmt.Errorf("--source %s: --base compares two images; it does not go with --state", spec)}
	}
	sel, err := pollDirty(c.Context(), im, d, spec, f.state, "")
	if err != nil {
		return err
	}
	defer sel.Close()
	if err := writeChanges(c.OutOrStdout(), f.format, sel); err != nil {
		return err
	}
	if f.state == "" {
		return partial(c, sel)
	}
	if len(sel.Errors) > 0 {
		// As a scan poll: what could not be read is looked at again
		// by the next poll, which redoes this one.
		fmt.Fprintf(c.ErrOrStderr(), "vmscope: poll state not updated: %d errors; the next poll redoes this one\n", len(sel.Errors))
		return partial(c, sel)
	}
	// A listing moves the cursor; the files it lists stay due for the
	// next scan poll (the state keeps them apart as unscanned).
	return sel.CommitContext(c.Context())
}

// compareWith compares image im (disk d) with the older image at path older.
func compareWith(c *cobra.Command, older string, im *disk.Image, d *fsparse.Disk) (*dirty.Selection, error) {
	return pollDirty(c.Context(), im, d, "base:"+older, "", "")
}

func partial(c *cobra.Command, sel *dirty.Selection) error {
	for _, e := range sel.Errors {
		fmt.Fprintf(c.ErrOrStderr(), "vmscope: %v\n", e)
	}
	if len(sel.Errors) > 0 {
		return problems(len(sel.Errors), sel.Errors[0])
	}
	return nil
}

type changesDoc struct {
	Source  string                 `json:"source"`
	Stats   map[string]dirty.Stats `json:"stats"`
	Changes []dirty.Change         `json:"changes"`
}

func writeChanges(w io.Writer, format string, sel *dirty.Selection) error {
	switch format {
	case "json":
		cs := sel.Changes
		if cs == nil {
			cs = []dirty.Change{}
		}
		return writeJSON(w, changesDoc{sel.Source, sel.Stats, cs})
	case "ndjson":
		for _, ch := range sel.Changes {
			if err := writeNDJSON(w, ch); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "CHANGE\tTYPE\tPATH\tREASONS\tDETAIL\n")
	for _, ch := range sel.Changes {
		p := printable(ch.Path)
		if ch.Volume != "disk" {
			p = ch.Volume + ":" + p
		}
		var why []string
		for _, k := range ch.Reasons {
			why = append(why, string(k))
		}
		detail := strings.Join(ch.Fields, ",")
		if len(ch.OldPaths) > 0 {
			detail = strings.TrimPrefix(detail+" was "+printable(strings.Join(ch.OldPaths, ",")), " ")
		}
		if len(ch.Paths) > 1 {
			detail = strings.TrimSpace(detail + fmt.Sprintf(" (%d links)", len(ch.Paths)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ch.Change, ch.Type, p, strings.Join(why, ","), detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d changes (source: %s)\n", len(sel.Changes), sel.Source)
	vols := slices.Sorted(maps.Keys(sel.Stats))
	for _, v := range vols {
		st := sel.Stats[v]
		fmt.Fprintf(w, "%s: %s in changed blocks (%d blocks: %d inode-table, %d of files, %d journal, %d other); %d inodes examined\n",
			v, humanize.IBytes(uint64(st.DirtyBytes)), st.DirtyBlocks, st.InodeTableBlocks, st.FileBlocks, st.JournalBlocks, st.OtherBlocks, st.Candidates)
	}
	return nil
}
