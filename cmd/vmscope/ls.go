package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/output"
)

// lsEntry is the JSON form of a listed file. Names that are not valid UTF-8
// also travel as raw bytes (path_raw, base64), since JSON strings cannot
// hold them.
type lsEntry struct {
	fsparse.Entry
	PathRaw []byte `json:"path_raw,omitempty"`
}

type lsFlags struct {
	recursive, long  bool
	format           string
	deleted, orphans bool
}

func newLsCmd() *cobra.Command {
	var f lsFlags
	c := &cobra.Command{
		Use:   "ls IMAGE [PATH]",
		Short: "List the files of the guest filesystems (like fls / virt-ls)",
		Long: `List the files at PATH (default: the root of every filesystem).
PATH is /etc or p2:/etc when the disk has several filesystems.
-r lists recursively, -l shows inode, mode, links, owner, size, times and link targets.
On NTFS, -l shows the $STANDARD_INFORMATION then the $FILE_NAME modification time
(they differ when times were set by hand), and each alternate data stream as
path:stream after its file; --format json carries both time sets (mtime... and
fn_times) and the file attributes (compressed, sparse, encrypted, reparse...).
A directory that cannot be read is reported on stderr and the listing goes on; the exit status is then 2.`,
		Args: rangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			return runLs(c.Context(), args[0], args[1:], &f, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	c.Flags().BoolVarP(&f.recursive, "recursive", "r", false, "list subdirectories recursively")
	c.Flags().BoolVarP(&f.long, "long", "l", false, "long listing: inode, mode, links, uid, gid, size, mtime, target")
	c.Flags().StringVar(&f.format, "format", "table", "output format: table, json or ndjson (json and ndjson always carry every field)")
	c.Flags().BoolVar(&f.deleted, "deleted", false, "list deleted names (ext2/3/4 directory slack, like fls -d) and freed inodes no name names")
	c.Flags().BoolVar(&f.orphans, "orphans", false, "list inodes in use that no name names (unlinked while open, or on the orphan list)")
	return c
}

// lsTarget is a directory to list: a volume and a name in it.
type lsTarget struct {
	v    *fsparse.Volume
	name string
}

// openLsTargets opens image and resolves what ls lists: the one path
// given, or the root of every volume. The caller closes the image.
func openLsTargets(image string, paths []string) (*disk.Image, *fsparse.Disk, []lsTarget, error) {
	im, d, err := openDisk(image)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(paths) == 1 {
		v, name, err := d.Resolve(paths[0])
		if err != nil {
			im.Close()
			return nil, nil, nil, err
		}
		return im, d, []lsTarget{{v, name}}, nil
	}
	var targets []lsTarget
	for _, v := range d.Volumes {
		targets = append(targets, lsTarget{v, "."})
	}
	return im, d, targets, nil
}

// runLs lists path (every filesystem's root when paths is empty) of image
// on out; what cannot be read is reported on errOut and the listing goes
// on.
func runLs(ctx context.Context, image string, paths []string, f *lsFlags, out, errOut io.Writer) error {
	if err := checkFormat(f.format, output.Table, output.JSON, output.NDJSON); err != nil {
		return err
	}
	if f.deleted || f.orphans {
		return runLsDeleted(ctx, image, paths, f, out, errOut)
	}
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
	lw := newLsWriter(out, f.format, f.long, len(d.Volumes) > 1)
	for _, t := range targets {
		if err := listVolume(ctx, errOut, lw, t.v, t.name, f.recursive, &probs); err != nil {
			return err
		}
	}
	if err := lw.close(); err != nil {
		return err
	}
	return probs.Err()
}

// listVolume lists name on v. What cannot be read, or is not as a file
// system allows, is reported on errOut and counted in probs; an error
// stops the command.
func listVolume(ctx context.Context, errOut io.Writer, out *lsWriter, v *fsparse.Volume, name string, recursive bool, probs *output.Counter) error {
	report := func(e fsparse.Entry, err error) {
		msg := fmt.Sprintf("%s:%s: %v", v.ID, displayPath(e), err)
		probs.Add(msg)
		fmt.Fprintf(errOut, "vmscope: %s\n", msg)
	}
	start, err := v.Lstat(name)
	if err != nil {
		return err
	}
	if !recursive {
		if start.Type != "dir" {
			return out.write(start)
		}
		ents, err := v.ReadDir(name)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.Err != nil {
				report(e, e.Err)
			}
			if e.Problem != nil {
				report(e, *e.Problem)
			}
			if err := out.write(e); err != nil {
				return err
			}
		}
		return nil
	}
	err = v.Walk(ctx, name, func(e fsparse.Entry, err error) error {
		if err != nil {
			report(e, err)
			if e.Path == start.Path || e.Type == "dir" {
				return nil
			}
		}
		if e.Problem != nil {
			report(e, *e.Problem)
		}
		if e.Path == start.Path && start.Type == "dir" {
			return nil // fls -r does not list the starting directory itself
		}
		return out.write(e)
	})
	return err
}

// displayPath is e's path for a terminal, escaped as ls -b does. When an
// element of the path is a name that cannot be a file name, fsparse has the
// path in that form already (every element through fsparse.EscapeName:
// "lnk/evil" is lnk\057evil), so such a name never reads as a path with an
// extra level.
func displayPath(e fsparse.Entry) string {
	if e.Shown != "" {
		return e.Shown
	}
	return printable(e.Path)
}

// lsWriter renders entries in one of the output formats.
type lsWriter struct {
	s         *output.Stream
	long      bool
	volPrefix bool
}

func newLsWriter(w io.Writer, format string, long, volPrefix bool) *lsWriter {
	return &lsWriter{s: output.NewStream(w, format), long: long, volPrefix: volPrefix}
}

func (l *lsWriter) write(e fsparse.Entry) error {
	if e.Err != nil {
		e.ErrString = e.Err.Error()
	}
	je := lsEntry{Entry: e}
	if !utf8.ValidString(e.Path) {
		je.PathRaw = []byte(e.Path)
	}
	return l.s.Write(je, func(w io.Writer) {
		p := displayPath(e)
		if l.volPrefix {
			p = e.Volume + ":" + p
		}
		if !l.long {
			fmt.Fprintln(w, p)
			return
		}
		if e.Target != "" {
			p += " -> " + printable(e.Target)
		}
		if e.FNTimes != nil {
			// NTFS: the $FILE_NAME modification time after the
			// $STANDARD_INFORMATION one, so that timestomping shows.
			fmt.Fprintf(w, "%8d %s %3d %5d %5d %12d %s %s %s\n", e.Ino, modeString(e.Mode), e.Links, e.Uid, e.Gid, e.Size, e.Mtime.UTC().Format("2006-01-02 15:04:05.000000000"), e.FNTimes.Mtime.UTC().Format("2006-01-02 15:04:05.000000000"), p)
			return
		}
		fmt.Fprintf(w, "%8d %s %3d %5d %5d %12d %s %s\n", e.Ino, modeString(e.Mode), e.Links, e.Uid, e.Gid, e.Size, e.Mtime.UTC().Format("2006-01-02 15:04:05.000000000"), p)
	})
}

func (l *lsWriter) close() error { return l.s.Close() }

// modeString renders a mode as ls -l does ("drwxr-sr-t").
func modeString(m fs.FileMode) string { return output.Mode(m) }
