package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/fsparse"
)

// lsEntry is the JSON form of a listed file. Names that are not valid UTF-8
// also travel as raw bytes (path_raw, base64), since JSON strings cannot
// hold them.
type lsEntry struct {
	fsparse.Entry
	PathRaw []byte `json:"path_raw,omitempty"`
}

func newLsCmd() *cobra.Command {
	var (
		recursive, long bool
		format          string
	)
	c := &cobra.Command{
		Use:   "ls IMAGE [PATH]",
		Short: "List the files of the guest filesystems (like fls / virt-ls)",
		Long: `List the files at PATH (default: the root of every filesystem).
PATH is /etc or p2:/etc when the disk has several filesystems.
-r lists recursively, -l shows inode, mode, links, owner, size, times and link targets.
A directory that cannot be read is reported on stderr and the listing goes on; the exit status is then 2.`,
		Args: rangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			if err := checkFormat(format, "table", "json", "ndjson"); err != nil {
				return err
			}
			im, d, err := openDisk(args[0])
			if err != nil {
				return err
			}
			defer im.Close()
			type target struct {
				v    *fsparse.Volume
				name string
			}
			var targets []target
			if len(args) == 2 {
				v, name, err := d.Resolve(args[1])
				if err != nil {
					return err
				}
				targets = append(targets, target{v, name})
			} else {
				for _, v := range d.Volumes {
					targets = append(targets, target{v, "."})
				}
			}
			var probs problemCount
			for _, p := range d.Problems {
				probs.add(p)
				fmt.Fprintf(c.ErrOrStderr(), "vmscope: %v\n", p)
			}
			out := newLsWriter(c.OutOrStdout(), format, long, len(d.Volumes) > 1)
			for _, t := range targets {
				if err := listVolume(c, out, t.v, t.name, recursive, &probs); err != nil {
					return err
				}
			}
			if err := out.close(); err != nil {
				return err
			}
			return probs.err()
		},
	}
	c.Flags().BoolVarP(&recursive, "recursive", "r", false, "list subdirectories recursively")
	c.Flags().BoolVarP(&long, "long", "l", false, "long listing: inode, mode, links, uid, gid, size, mtime, target")
	c.Flags().StringVar(&format, "format", "table", "output format: table, json or ndjson (json and ndjson always carry every field)")
	return c
}

// listVolume lists name on v. What cannot be read, or is not as a file
// system allows, is reported on stderr and counted in probs; an error stops
// the command.
func listVolume(c *cobra.Command, out *lsWriter, v *fsparse.Volume, name string, recursive bool, probs *problemCount) error {
	report := func(e fsparse.Entry, err error) {
		msg := fmt.Sprintf("%s:%s: %v", v.ID, displayPath(e), err)
		probs.add(msg)
		fmt.Fprintf(c.ErrOrStderr(), "vmscope: %s\n", msg)
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
	err = v.Walk(c.Context(), name, func(e fsparse.Entry, err error) error {
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

// problemCount counts the problems a command met and keeps the first, for
// the summary run prints on stderr.
type problemCount struct {
	mu    sync.Mutex
	n     int
	first any
}

func (p *problemCount) add(what any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == 0 {
		p.first = what
	}
	p.n++
}

// err is nil without problems, else errPartial with the summary.
func (p *problemCount) err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return problems(p.n, p.first)
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
	w         *bufio.Writer
	format    string
	long      bool
	volPrefix bool
	n         int
}

func newLsWriter(w io.Writer, format string, long, volPrefix bool) *lsWriter {
	return &lsWriter{w: bufio.NewWriterSize(w, 64<<10), format: format, long: long, volPrefix: volPrefix}
}

func (l *lsWriter) write(e fsparse.Entry) error {
	if e.Err != nil {
		e.ErrString = e.Err.Error()
	}
	switch l.format {
	case "json", "ndjson":
		je := lsEntry{Entry: e}
		if !utf8.ValidString(e.Path) {
			je.PathRaw = []byte(e.Path)
		}
		b, err := json.Marshal(je)
		if err != nil {
			return err
		}
		if l.format == "json" {
			if l.n == 0 {
				l.w.WriteString("[\n  ")
			} else {
				l.w.WriteString(",\n  ")
			}
		}
		l.w.Write(b)
		if l.format == "ndjson" {
			l.w.WriteByte('\n')
		}
	default:
		p := displayPath(e)
		if l.volPrefix {
			p = e.Volume + ":" + p
		}
		if !l.long {
			fmt.Fprintln(l.w, p)
			break
		}
		if e.Target != "" {
			p += " -> " + printable(e.Target)
		}
		fmt.Fprintf(l.w, "%8d %s %3d %5d %5d %12d %s %s\n", e.Ino, modeString(e.Mode), e.Links, e.Uid, e.Gid, e.Size, e.Mtime.UTC().Format("2006-01-02 15:04:05.000000000"), p)
	}
	l.n++
	return nil
}

func (l *lsWriter) close() error {
	if l.format == "json" {
		if l.n == 0 {
			l.w.WriteString("[]\n")
		} else {
			l.w.WriteString("\n]\n")
		}
	}
	return l.w.Flush()
}

// modeString renders a mode as ls -l does ("drwxr-sr-t").
func modeString(m fs.FileMode) string {
	var b strings.Builder
	switch {
	case m.IsDir():
		b.WriteByte('d')
	case m&fs.ModeSymlink != 0:
		b.WriteByte('l')
	case m&fs.ModeNamedPipe != 0:
		b.WriteByte('p')
	case m&fs.ModeSocket != 0:
		b.WriteByte('s')
	case m&fs.ModeCharDevice != 0:
		b.WriteByte('c')
	case m&fs.ModeDevice != 0:
		b.WriteByte('b')
	default:
		b.WriteByte('-')
	}
	const rwx = "rwxrwxrwx"
	p := m.Perm()
	for i := 0; i < 9; i++ {
		c := byte('-')
		if p&(1<<uint(8-i)) != 0 {
			c = rwx[i]
		}
		switch {
		case i == 2 && m&fs.ModeSetuid != 0:
			c = map[bool]byte{true: 's', false: 'S'}[c == 'x']
		case i == 5 && m&fs.ModeSetgid != 0:
			c = map[bool]byte{true: 's', false: 'S'}[c == 'x']
		case i == 8 && m&fs.ModeSticky != 0:
			c = map[bool]byte{true: 't', false: 'T'}[c == 'x']
		}
		b.WriteByte(c)
	}
	return b.String()
}
