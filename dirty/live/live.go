// Package live polls the changed files of a running QEMU's disk at one
// point in time, without pausing the guest, with QEMU's own mechanisms
// (those of incremental backup):
//
//  1. blockdev-add a temporary qcow2 (the fleecing image) whose backing is
//     the disk's format node;
//  2. one transaction: blockdev-backup sync=none from the disk into it
//     (copy-before-write: the fleecing node shows the disk frozen at this
//     instant), block-dirty-bitmap-add N+1 (persistent, 4 KiB) and
//     block-dirty-bitmap-disable N: bitmap N holds exactly the writes
//     between the previous poll's point in time and this one;
//  3. nbd-server-start on a unix socket (if not already ours) and
//     block-export-add of the fleecing node, read-only, with bitmap N and
//     the allocation depth;
//  4. NBD_CMD_BLOCK_STATUS of qemu:dirty-bitmap:N is the dirty range set;
//     the export is the disk to map it on (package dirty) and to scan;
//  5. teardown: block-export-del, block-job-cancel, blockdev-del, the file
//     removed, block-dirty-bitmap-remove N. A poll that failed first
//     merges N into N+1, so no write is ever lost.
//
// Everything vmscope adds to QEMU is named with the prefix "vmscope-":
// the tracking bitmaps vmscope-track-TAG-GEN (TAG names the poll state, so
// two states of one disk keep their own bitmaps), the node
// vmscope-fleece, the job vmscope-backup and the export vmscope-export.
// Release removes what a killed poll left.
package live

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vmscope/vmscope/dirty/nbd"
	"github.com/vmscope/vmscope/dirty/source"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// Prefix starts the name of everything vmscope adds to a QEMU.
const Prefix = "vmscope-"

// The names of a poll's objects: one poll of a QEMU at a time (a second
// one finds them and refuses).
const (
	fleeceNode = Prefix + "fleece"
	backupJob  = Prefix + "backup"
	exportID   = Prefix + "export"
	exportName = Prefix + "export"
)

// ErrBusy: another poll is running on this QEMU, or a killed one left its
// objects behind.
var ErrBusy = vmerr.New("live: a vmscope poll is running on this guest, or a killed one left its objects behind (vmscope guest release --guest SPEC removes them)", nil)

// Options of a poll.
type Options struct {
	// Disk picks the block device: QOM path, device id, node name or
	// -drive id; "" for the only disk.
	Disk string
	// Dir is a directory QEMU's user can write: the fleecing image and
	// the NBD socket go there. Default: os.TempDir().
	Dir string
	// Tag names the poll state the tracking bitmaps belong to (StateTag).
	// "" takes a point in time without tracking: no bitmap is added or
	// read (a full scan of the live disk).
	Tag string
	// StopAfter, when > 0, is a test hook: after step StopAfter (1
	// fleecing node added, 2 transaction, 3 export, 4 poll done, 5
	// export deleted) the poll says so on Log and blocks until killed.
	StopAfter int
	// Log receives the StopAfter notice (os.Stderr when nil).
	Log io.Writer
}

// StateTag is the tag of the tracking bitmaps of the poll state at path.
func StateTag(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	s := sha256.Sum256([]byte(abs))
	return hex.EncodeToString(s[:4])
}

// View is one point in time of the disk: the fleecing export, open over
// NBD, and the writes since the last poll's point in time.
type View struct {
	Disk *Disk
	// Time is the point in time: when the transaction returned.
	Time time.Time
	// Gen is the generation of the bitmap created at Time (the next
	// poll reads it); Read is the bitmap this poll reads ("" when the
	// poll is full).
	Gen  uint64
	Read string
	// Full: the dirty set cannot be trusted (first poll, missing or
	// inconsistent bitmap, another node); Why says why.
	Full bool
	Why  string
	// Dirty are the guest bytes written between the previous poll's
	// point in time and Time.
	Dirty rangeset.Set
	// Image is the disk at Time (raw, over NBD).
	Image  *disk.Image
	Client *nbd.Client
	// BytesRead counts the bytes read through Image; TempBytes is the
	// space the fleecing image took (what the guest overwrote during the
	// poll), measured by End before it removes the file.
	BytesRead atomic.Int64
	TempBytes int64

	m        qemu.Monitor
	o        Options
	tmp      string
	sock     string
	started  bool // this poll started the NBD server
	rotated  bool // the transaction went through
	exported bool
	added    bool // the fleecing node was added
	next     string
	merged   []string     // orphans of a killed poll merged forward at start
	lv       *libvirtPoll // a libvirt domain's poll (libvirt.go)
}

func (o *Options) stop(step int, what string) {
	if o.StopAfter != step {
		return
	}
	w := o.Log
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "vmscope: live: stopped after step %d (%s) as VMSCOPE_LIVE_STOP_AFTER asks; kill me\n", step, what)
	select {}
}

// Step is the test hook of a step the caller runs (4: the poll's state
// saved): see Options.StopAfter.
func (v *View) Step(step int, what string) { v.o.stop(step, what) }

// sockPath is the NBD socket of disk d in dir.
func sockPath(dir string, d *Disk) string {
	s := sha256.Sum256([]byte(d.File + "\x00" + d.Node))
	return filepath.Join(dir, Prefix+"nbd-"+hex.EncodeToString(s[:4])+".sock")
}

// Begin runs the steps 1 to 4 of a poll on the disk of o and returns the
// view; End must follow, whatever happens. On error, Begin has undone
// what it did.
func Begin(ctx context.Context, m qemu.Monitor, o Options) (v *View, err error) {
	if o.Dir == "" {
		o.Dir = os.TempDir()
	}
	d, err := FindDisk(ctx, m, o.Disk)
	if err != nil {
		return nil, err
	}
	left, err := findLeftovers(ctx, m)
	if err != nil {
		return nil, err
	}
	if !left.Empty() {
		return nil, fmt.Errorf("%w: %s", ErrBusy, left)
	}
	v = &View{Disk: d, m: m, o: o, sock: sockPath(o.Dir, d)}
	defer func() {
		if err != nil {
			err = errors.Join(err, v.End(context.WithoutCancel(ctx), false))
			v = nil
		}
	}()
	if o.Tag == "" {
		v.Full, v.Why = true, "no poll state: a full pass at one point in time"
	} else if err := v.pickBitmaps(ctx); err != nil {
		return v, err
	}

	// 1. The fleecing image, backed by the disk's format node.
	f, err := os.CreateTemp(o.Dir, Prefix+"fleece-*.qcow2")
	if err != nil {
		return v, fmt.Errorf("live: fleecing image: %w", err)
	}
	f.Close()
	v.tmp = f.Name()
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", v.tmp, strconv.FormatInt(d.Size, 10)).CombinedOutput(); err != nil {
		return v, fmt.Errorf("live: qemu-img create %s: %v: %s", v.tmp, err, out)
	}
	err = qmp(ctx, m, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": fleeceNode,
		"file":    map[string]any{"driver": "file", "filename": v.tmp, "node-name": fleeceNode + "-file"},
		"backing": d.Node}, nil)
	if err != nil {
		if isQMPError(err, "Duplicate") {
			err = fmt.Errorf("%w: %v", ErrBusy, err)
		}
		return v, err
	}
	v.added = true
	o.stop(1, "fleecing node added")

	// 2. The point in time.
	actions := []map[string]any{
		{"type": "blockdev-backup", "data": map[string]any{"device": d.Node, "target": fleeceNode, "sync": "none", "job-id": backupJob}},
	}
	if v.next != "" {
		actions = append(actions, map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": d.Node, "name": v.next, "persistent": true, "granularity": 4096}})
	}
	if v.Read != "" {
		actions = append(actions, map[string]any{"type": "block-dirty-bitmap-disable", "data": map[string]any{"node": d.Node, "name": v.Read}})
	}
	if err := qmp(ctx, m, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		if isQMPError(err, "already in use") || isQMPError(err, "busy") {
			err = fmt.Errorf("%w: %v", ErrBusy, err)
		}
		return v, fmt.Errorf("live: transaction (backup, bitmap %s added, %s disabled): %w", v.next, v.Read, err)
	}
	v.Time = time.Now().UTC()
	v.rotated = true
	o.stop(2, "transaction done")

	// 3. The export.
	err = qmp(ctx, m, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": v.sock}}}, nil)
	switch {
	case err == nil:
		v.started = true
	case isQMPError(err, "already running"):
		if _, serr := os.Stat(v.sock); serr != nil {
			return v, fmt.Errorf("live: QEMU's NBD server was started by another tool (vmscope cannot learn its address): %w", err)
		}
		v.started = true // ours, left by a killed poll: stopped at the end
	default:
		return v, err
	}
	exp := map[string]any{"type": "nbd", "id": exportID, "node-name": fleeceNode, "name": exportName,
		"writable": false, "allocation-depth": true}
	if v.Read != "" {
		exp["bitmaps"] = []string{v.Read}
	}
	if err := qmp(ctx, m, "block-export-add", exp, nil); err != nil {
		return v, err
	}
	v.exported = true
	o.stop(3, "export added")

	// 4. The dirty ranges and the disk, over NBD.
	dirtyCtx := ""
	if v.Read != "" {
		dirtyCtx = "qemu:dirty-bitmap:" + v.Read
	}
	if err := v.dial(ctx, v.sock, exportName, dirtyCtx); err != nil {
		return v, err
	}
	return v, v.openImage(ctx, "qemu:"+d.File)
}

// dial connects v.Client to the export named export at the unix socket
// sock, checks that it is the disk's size and, unless dirtyCtx is ""
// (a full read), reads v.Dirty from that metadata context.
func (v *View) dial(ctx context.Context, sock, export, dirtyCtx string) error {
	nopt := nbd.Options{Export: export}
	if dirtyCtx != "" {
		nopt.MetaContexts = []string{dirtyCtx}
	}
	var err error
	if v.Client, err = nbd.Dial(ctx, "unix", sock, nopt); err != nil {
		return err
	}
	if v.Client.Size() != v.Disk.Size {
		return fmt.Errorf("live: the export has %d bytes, the disk %d", v.Client.Size(), v.Disk.Size)
	}
	if dirtyCtx == "" {
		return nil
	}
	ext, err := v.Client.BlockStatus(ctx, dirtyCtx, 0, v.Disk.Size)
	if errors.Is(err, nbd.ErrTooManyExtents) {
		// The bitmap is too fragmented to hold as ranges: read it all.
		v.Full, v.Why = true, fmt.Sprintf("the dirty bitmap splits into more than %d extents", nbd.DefaultMaxExtents)
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ext {
		if e.Flags&1 != 0 {
			v.Dirty.Add(e.Off, e.Off+e.Len)
		}
	}
	return nil
}

// openImage opens v.Image (named name) over v.Client, counting the bytes
// read and, for an incremental read, reading the dirty blocks ahead.
func (v *View) openImage(ctx context.Context, name string) error {
	var r io.ReaderAt = countingReader{v.Client.ReaderAt(context.WithoutCancel(ctx)), &v.BytesRead}
	if !v.Full {
		r = prefetch(ctx, r, v.Disk.Size, v.Dirty)
	}
	var err error
	v.Image, err = disk.New(r, v.Disk.Size, nil, disk.WithName(name))
	return err
}

// pickBitmaps merges the orphans of a killed poll forward, removes the
// inconsistent tracking bitmaps and picks the bitmap to read (N) and the
// one to create (N+1).
func (v *View) pickBitmaps(ctx context.Context) error {
	m, d := v.m, v.Disk
	// Orphans of a killed poll (disabled tracking bitmaps of this tag):
	// merged into the enabled one, so that it holds every write since
	// the point in time they began at.
	var cur *trackBitmap
	var last uint64
	ts := d.tracks(v.o.Tag)
	for i := range ts {
		last = ts[i].gen
		if ts[i].Recording && !ts[i].Inconsistent {
			cur = &ts[i]
		}
	}
	for _, t := range ts {
		switch {
		case cur != nil && t.Name != cur.Name && !t.Recording && !t.Inconsistent && !t.Busy:
			if err := mergeForward(ctx, m, d.Node, t.Name, cur.Name); err != nil {
				return err
			}
			v.merged = append(v.merged, t.Name)
		case t.Inconsistent:
			// QEMU quit without storing it (crash, kill): in-use.
			if err := qmp(ctx, m, "block-dirty-bitmap-remove", map[string]any{"node": d.Node, "name": t.Name}, nil); err != nil {
				return err
			}
		}
	}
	v.Gen = last + 1
	v.next = trackName(v.o.Tag, v.Gen)
	switch {
	case cur == nil && len(ts) > 0 && ts[len(ts)-1].Inconsistent:
		v.Full, v.Why = true, fmt.Sprintf("bitmap %s is inconsistent (in-use: QEMU stopped without storing it)", ts[len(ts)-1].Name)
	case cur == nil:
		v.Full, v.Why = true, fmt.Sprintf("no tracking bitmap %strack-%s-* on node %s (first poll; or it was removed, or QEMU was killed before it stored it)", Prefix, v.o.Tag, d.Node)
	case cur.Busy:
		return fmt.Errorf("%w: bitmap %s is busy", ErrBusy, cur.Name)
	default:
		v.Read = cur.Name
	}
	return nil
}

type countingReader struct {
	r io.ReaderAt
	n *atomic.Int64
}

func (c countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// mergeForward merges bitmap from into to and removes from.
func mergeForward(ctx context.Context, m qemu.Monitor, node, from, to string) error {
	err := qmp(ctx, m, "transaction", map[string]any{"actions": []map[string]any{
		{"type": "block-dirty-bitmap-merge", "data": map[string]any{"node": node, "target": to, "bitmaps": []string{from}}},
		{"type": "block-dirty-bitmap-remove", "data": map[string]any{"node": node, "name": from}},
	}}, nil)
	if err != nil {
		return fmt.Errorf("live: merge bitmap %s into %s: %w", from, to, err)
	}
	return nil
}

// Merged lists the bitmaps of a killed poll that Begin merged forward.
func (v *View) Merged() []string { return v.merged }

// Source is the dirty source of the view for dirty.Select.
func (v *View) Source() source.Source { return &liveSource{v} }

// Next is the name of the bitmap created at the view's point in time.
func (v *View) Next() string { return v.next }

// End tears the poll down: the export, the job, the fleecing node and
// file, the NBD server it started; then the bitmap this poll read is
// removed. When ok is false (the poll failed, or its state was not
// saved) that bitmap is first merged into the new one, so the next poll
// sees its writes again.
func (v *View) End(ctx context.Context, ok bool) error {
	if v.lv != nil {
		return v.lv.end(ctx, v, ok)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	m := v.m
	var errs []error
	if v.Image != nil {
		errs = append(errs, v.Image.Close())
	}
	if v.Client != nil {
		errs = append(errs, v.Client.Close())
		v.Client = nil
	}
	if v.exported {
		// hard: our client has gone, QEMU may not have seen it yet
		if err := qmp(ctx, m, "block-export-del", map[string]any{"id": exportID, "mode": "hard"}, nil); err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, waitGone(ctx, "export "+exportID, exportGone(ctx, m, exportID)))
		}
		v.exported = false
	}
	v.o.stop(5, "export deleted")
	if v.rotated {
		if err := qmp(ctx, m, "block-job-cancel", map[string]any{"device": backupJob, "force": true}, nil); err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, waitGone(ctx, "job "+backupJob, jobGone(ctx, m, backupJob)))
		}
	}
	if v.added {
		errs = append(errs, qmp(ctx, m, "blockdev-del", map[string]any{"node-name": fleeceNode}, nil))
		v.added = false
	}
	if v.tmp != "" {
		var st syscall.Stat_t
		if syscall.Stat(v.tmp, &st) == nil {
			v.TempBytes = st.Blocks * 512
		}
		if err := os.Remove(v.tmp); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
		v.tmp = ""
	}
	if v.started {
		errs = append(errs, qmp(ctx, m, "nbd-server-stop", nil, nil))
		os.Remove(v.sock)
		v.started = false
	}
	if v.rotated && v.Read != "" && v.next != "" {
		if ok {
			errs = append(errs, qmp(ctx, m, "block-dirty-bitmap-remove", map[string]any{"node": v.Disk.Node, "name": v.Read}, nil))
		} else {
			errs = append(errs, mergeForward(ctx, m, v.Disk.Node, v.Read, v.next))
		}
	}
	v.rotated = false
	return errors.Join(errs...)
}

// liveSource is the view as a dirty source: the writes of bitmap N, or a
// full pass when the state's cursor is not where bitmap N began.
type liveSource struct{ v *View }

func (*liveSource) String() string { return "live" }

// Since returns the view's dirty set, or full when it does not cover
// every write since prev's point in time: a first poll, a state of
// another node, a bitmap missing or in-use, or a state whose bitmap is
// not the one this poll read (or one merged forward into it).
func (s *liveSource) Since(_ context.Context, prev, next *source.Cursor) (rangeset.Set, bool, error) {
	v := s.v
	next.Live = &source.LiveCursor{Node: v.Disk.Identity(), Bitmap: v.next}
	full, why := v.Full, v.Why
	switch {
	case full:
	case prev == nil:
		full, why = true, "first poll"
	case prev.Live == nil:
		full, why = true, fmt.Sprintf("the state's last poll used source %s", prev.Source)
	case prev.Live.Node != v.Disk.Identity():
		full, why = true, fmt.Sprintf("the state was made on %s, this disk is %s", prev.Live.Node, v.Disk.Identity())
	case prev.Live.Bitmap != v.Read:
		if why = v.uncovered(prev.Live.Bitmap); why != "" {
			full = true
		}
	}
	if full {
		v.Full, v.Why = true, why
		return rangeset.Set{}, true, nil
	}
	return v.Dirty, false, nil
}

// uncovered says why the bitmap (or checkpoint) the view read does not
// cover every write since the state's bitmap name, "" when it does.
// QEMU: name was merged into it (a killed poll, released: same tag, older
// generation). libvirt: name is one of the older checkpoints this poll
// read from.
func (v *View) uncovered(name string) string {
	if v.lv != nil {
		if slices.Contains(v.merged, name) {
			return ""
		}
		return fmt.Sprintf("the state's checkpoint %s is not among the domain's (%s): deleted by another tool", name, strings.Join(v.lv.older, ", "))
	}
	pt, pg, ok1 := parseTrack(name)
	rt, rg, ok2 := parseTrack(v.Read)
	if !ok1 || !ok2 || pt != rt || pg > rg || !v.mergedFrom(name) {
		return fmt.Sprintf("the state's bitmap %s is not the one on the disk (%s): removed or reset by another tool", name, v.Read)
	}
	return ""
}

// mergedFrom reports whether bitmap name (of the state) is covered by the
// bitmap the view read: it was merged into it by this poll or by Release
// (then it no longer exists).
func (v *View) mergedFrom(name string) bool {
	if slices.Contains(v.merged, name) {
		return true
	}
	for _, b := range v.Disk.Bitmaps {
		if b.Name == name {
			return false // still there, and not merged: not ours to trust
		}
	}
	return true
}
