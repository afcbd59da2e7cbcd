package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/output"
	"github.com/vmscope/vmscope/timeline"
)

type timelineFlags struct {
	format, since, until, tz string
	journal                  bool
}

func newTimelineCmd() *cobra.Command {
	var f timelineFlags
	c := &cobra.Command{
		Use:   "timeline IMAGE [PATH]",
		Short: "File-system timeline: a Sleuth Kit body file, mactime's CSV or NDJSON events",
		Long: `Write a timeline of every file below PATH (default: every filesystem).
--format bodyfile (default) writes one line per file in the Sleuth Kit 3.x body format
  (MD5|name|inode|mode_as_string|UID|GID|size|atime|mtime|ctime|crtime), what fls -r -m / writes
  and mactime -b reads;
--format csv writes what mactime -b BODY -d writes: one line per file and second, macb flags,
  sorted by time, dates in --tz (default UTC);
--format ndjson writes one JSON object per file and instant, times to the nanosecond.
On ext2/3/4, deleted names found in directory slack are included as fls -r -m includes them
("name (deleted)", or "(deleted-realloc)" when the inode is in use again, with that inode's
metadata), and from the root, freed inodes no name names as /$OrphanFiles/OrphanFile-N.
--since and --until (RFC 3339, or 2006-01-02[T15:04:05] in --tz) keep what falls in [since, until):
  a body line when any of its times does, an event when its time does.`,
		Args: rangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			return runTimeline(c.Context(), args[0], args[1:], &f, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	c.Flags().StringVar(&f.format, "format", "bodyfile", "output format: bodyfile, csv or ndjson")
	c.Flags().StringVar(&f.since, "since", "", "keep times at or after this instant")
	c.Flags().StringVar(&f.until, "until", "", "keep times before this instant")
	c.Flags().BoolVar(&f.journal, "journal", false, "add the earlier inode versions and names the ext3/4 journal still holds, marked \"(journal seq N)\"")
	c.Flags().StringVar(&f.tz, "tz", "UTC", "time zone of csv dates and of --since/--until without a zone (IANA name, or Local)")
	return c
}

// parseWhen reads a --since/--until value.
func parseWhen(s string, loc *time.Location) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, l := range []string{"2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(l, s, loc); err == nil {
			return t, nil
		}
	}
	return time.Time{}, usageError{fmt.Errorf("time %q: want RFC 3339 or 2006-01-02[T15:04:05]", s)}
}

func runTimeline(ctx context.Context, image string, paths []string, f *timelineFlags, out, errOut io.Writer) error {
	if err := checkFormat(f.format, "bodyfile", "csv", output.NDJSON); err != nil {
		return err
	}
	loc, err := time.LoadLocation(f.tz)
	if err != nil {
		return usageError{fmt.Errorf("--tz: %w", err)}
	}
	since, err := parseWhen(f.since, loc)
	if err != nil {
		return err
	}
	until, err := parseWhen(f.until, loc)
	if err != nil {
		return err
	}
	im, d, err := openDisk(image)
	if err != nil {
		return err
	}
	defer im.Close()
	// Most of the heap is the records, kept to the end: collect garbage
	// at 5x the live heap instead of 2x (bench/timeline.sh: half the user
	// time, about the same peak memory).
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	type target struct {
		v      *fsparse.Volume
		name   string
		prefix string
	}
	var targets []target
	if len(paths) == 1 {
		v, name, err := d.Resolve(paths[0])
		if err != nil {
			return err
		}
		targets = append(targets, target{v, name, ""})
	} else {
		for _, v := range d.Volumes {
			p := ""
			if len(d.Volumes) > 1 {
				p = v.ID + ":"
			}
			targets = append(targets, target{v, ".", p})
		}
	}
	var probs output.Counter
	for _, p := range d.Problems {
		probs.Add(p)
		fmt.Fprintf(errOut, "vmscope: %v\n", p)
	}
	var recs []timeline.Record
	for _, t := range targets {
		// The whole tree is read: inode tables once, from memory after.
		if t.v, err = t.v.WithInodeTables(ctx, fsparse.TablesBudget); err != nil {
			return err
		}
		var ps, dps []timeline.Problem
		recs, ps, err = timeline.Collect(ctx, t.v, t.name, t.prefix, recs)
		if err != nil {
			return err
		}
		if f.journal {
			recs, dps, err = timeline.WalkJournal(ctx, t.v, t.prefix, recs)
			if err != nil {
				return err
			}
			ps = append(ps, dps...)
		}
		for _, p := range ps {
			probs.Add(p)
			fmt.Fprintf(errOut, "vmscope: %s:%s\n", t.v.ID, printable(p.Error()))
		}
	}
	switch f.format {
	case "csv":
		err = timeline.WriteCSV(out, timeline.CSVEvents(recs, since, until), loc)
	case output.NDJSON:
		err = timeline.WriteNDJSON(out, timeline.JSONEvents(recs, since, until))
	default:
		if !since.IsZero() || !until.IsZero() {
			kept := recs[:0]
			for _, r := range recs {
				if r.InRange(since, until) {
					kept = append(kept, r)
				}
			}
			recs = kept
		}
		err = timeline.WriteBody(out, recs)
	}
	if err != nil {
		return err
	}
	return probs.Err()
}
