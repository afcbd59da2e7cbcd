package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/dirty/live"
	"github.com/vmscope/vmscope/dirty/state"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/vmi/qemu"
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

// liveDisk is the disk of a running guest at one point in time (package
// dirty/live): the fleecing export read over NBD, with the poll state
// when the poll keeps one.
type liveDisk struct {
	spec string
	ep   qemu.Endpoint
	view *live.View
	im   *disk.Image
	d    *fsparse.Disk
	db   *state.DB // nil without --state

	errOut io.Writer
}

// liveFlags are the flags of a live disk.
type liveFlags struct {
	guest, disk, scratch string
}

func (lf *liveFlags) add(fl *pflag.FlagSet) {
	fl.StringVar(&lf.guest, "guest", "", "a running guest instead of IMAGE (its disk is read at one point in time over NBD, never paused): "+guestSpecHelp)
	fl.StringVar(&lf.disk, "disk", "", "with --guest: the block device (QOM path, device id, node name or drive id; default the only disk)")
	fl.StringVar(&lf.scratch, "scratch", "", "with --guest: a directory QEMU can write, for the fleecing image and the NBD socket (default $TMPDIR)")
}

// openLive takes the point in time of the disk of the guest of lf: the
// state first (its lock: a second poller with the same state waits, then
// refuses), then QEMU (a second poller of the same guest finds the first
// one's objects and refuses). Close it with ok = the poll's state was
// saved.
func openLive(ctx context.Context, lf *liveFlags, statePath string, errOut io.Writer) (*liveDisk, error) {
	var err error
	l := &liveDisk{spec: lf.guest, errOut: errOut}
	o := live.Options{Disk: lf.disk, Dir: lf.scratch, Log: errOut}
	if s := os.Getenv("VMSCOPE_LIVE_STOP_AFTER"); s != "" {
		o.StopAfter, _ = strconv.Atoi(s) // a test hook: see live.Options
	}
	if statePath != "" {
		if l.db, err = state.Open(statePath); err != nil {
			return nil, err
		}
		o.Tag = live.StateTag(statePath)
	}
	if l.ep, err = resolveGuest(ctx, lf.guest); err != nil {
		l.close(ctx, false)
		return nil, err
	}
	if l.view, err = beginLive(ctx, l.ep, o); err != nil {
		l.close(ctx, false)
		return nil, err
	}
	l.im = l.view.Image
	if l.d, err = fsparse.Open(l.im, l.im.Size()); err != nil {
		l.close(ctx, false)
		return nil, err
	}
	v := l.view
	fmt.Fprintf(errOut, "vmscope: %s\n", l.point())
	if len(v.Merged()) > 0 {
		fmt.Fprintf(errOut, "vmscope: merged the bitmaps a killed poll left: %s\n", strings.Join(v.Merged(), ", "))
	}
	return l, nil
}

// point says which point in time the view is.
func (l *liveDisk) point() string {
	v := l.view
	s := fmt.Sprintf("guest %s disk %s at %s", l.spec, v.Disk.ID(), v.Time.Format(time.RFC3339Nano))
	if v.Next() != "" {
		s += fmt.Sprintf(" (bitmap generation %d", v.Gen)
		if v.Read != "" {
			s += fmt.Sprintf(", writes since generation %d from %s", v.ReadGen(), v.Read)
		}
		s += ")"
	}
	return s
}

// recoverAll replaces each volume of the view by its journal-recovered
// view (a running guest's filesystem needs recovery: its newest metadata
// may be in the journal only), for a full scan; a dirty poll does that
// itself. A replay that fails leaves the volume as it is on the disk and
// says so on errOut.
func (l *liveDisk) recoverAll(ctx context.Context, errOut io.Writer) {
	for i, v := range l.d.Volumes {
		rv, ov, err := dirty.Recovered(ctx, v)
		switch {
		case err != nil:
			fmt.Fprintf(errOut, "vmscope: %v (scanned as it is on the disk)\n", err)
		case ov != nil && ov.FastCommits > 0:
			fmt.Fprintf(errOut, "vmscope: %s: %d journal fast commits not replayed\n", v.ID, ov.FastCommits)
			l.d.Volumes[i] = rv
		default:
			l.d.Volumes[i] = rv
		}
	}
}

// selectLive runs the dirty poll of the live view against its state.
func (l *liveDisk) selectLive(ctx context.Context, errOut io.Writer, rulesDigest string) (*dirty.Selection, error) {
	if l.db == nil {
		return nil, usageError{fmt.Errorf("--dirty live needs --state PATH (the poll state; the first poll scans everything)")}
	}
	sel, err := dirty.Select(ctx, l.im, l.d, l.view.Source(), l.db, rulesDigest)
	if err != nil {
		return nil, err
	}
	sel.Source = "live: " + l.point()
	if l.view.Full {
		fmt.Fprintf(errOut, "vmscope: full pass: %s\n", l.view.Why)
	}
	return sel, nil
}

// close tears the point in time down (the bitmap read is merged forward
// unless ok: the poll's state was saved), then QMP and the state.
func (l *liveDisk) close(ctx context.Context, ok bool) error {
	var errs []error
	if l.view != nil {
		errs = append(errs, l.view.End(ctx, ok))
		if l.errOut != nil {
			fmt.Fprintf(l.errOut, "vmscope: live: %s read over NBD in %v; the fleecing image took %s\n",
				humanize.IBytes(uint64(l.view.BytesRead.Load())), time.Since(l.view.Time).Round(time.Millisecond), humanize.IBytes(uint64(l.view.TempBytes)))
		}
	}
	errs = append(errs, closeEndpoint(l.ep))
	if l.db != nil {
		errs = append(errs, l.db.Close())
	}
	return errors.Join(errs...)
}

// releaseLive removes what a killed live poll left in the guest spec
// (guest release): vmscope- nodes, jobs, exports, the NBD socket, and
// merges orphaned tracking bitmaps forward.
func releaseLive(ctx context.Context, spec string, w io.Writer) error {
	rel, err := releaseLiveGuest(ctx, spec)
	for _, r := range rel.Removed {
		fmt.Fprintf(w, "live poll: removed %s\n", r)
	}
	for _, r := range rel.Merged {
		fmt.Fprintf(w, "live poll: merged bitmap %s\n", r)
	}
	return err
}
