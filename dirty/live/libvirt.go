package live

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vmscope/vmscope/vmi/qemu/libvirt"
)

// The libvirt variant of a poll. A libvirt domain's disk is polled
// through libvirt's own checkpoints and pull-mode backup (never raw
// blockdev commands through the monitor pass-through, which would hide
// nodes and jobs from libvirt):
//
//  1. virDomainBackupBegin, <domainbackup mode='pull'> on a unix socket
//     in a scratch folder QEMU's user owns, <incremental> the oldest
//     tracking checkpoint of the state's tag (none: a full backup), with
//     the checkpoint of the next generation created at the backup's
//     start (the point in time);
//  2. the job's export and its qemu:dirty-bitmap:backup-TARGET context
//     read from the job's XML, the dirty ranges read with
//     NBD_CMD_BLOCK_STATUS, the disk at the point in time read over NBD;
//  3. End: virDomainAbortJob (export and scratch overlay go), the scratch
//     folder removed; then, on success, the older tracking checkpoints of
//     the tag are deleted; on failure the new one is, and the next poll
//     reads again from the old one, which still records every write since
//     its point in time.
//
// The checkpoints are named as the QMP variant's bitmaps,
// vmscope-track-TAG-GEN (libvirt names each disk's bitmap after its
// checkpoint). A killed poll leaves its backup job (Release aborts it)
// and, maybe, its new checkpoint: the next poll reads from the oldest
// tracking checkpoint, which covers the newer ones.

// libvirtPoll is the libvirt side of a View.
type libvirtPoll struct {
	dom     *libvirt.Domain
	target  string
	scratch string   // the scratch folder (the overlay and the socket)
	older   []string // the tracking checkpoints of the tag before next
	begun   bool     // the backup job runs
	created bool     // this poll created checkpoint next
}

// scratchPrefix starts the name of a poll's scratch folder.
const scratchPrefix = Prefix + "lv-"

// BeginLibvirt is Begin for a libvirt domain: o.Disk names the disk by its
// target ("vda"), device alias, QOM path or node name; o.Dir is where the
// scratch folder goes (it is given to the domain's QEMU user). End must
// follow, whatever happens.
func BeginLibvirt(ctx context.Context, dom *libvirt.Domain, o Options) (v *View, err error) {
	if o.Dir == "" {
		o.Dir = os.TempDir()
	}
	d, target, err := findLibvirtDisk(ctx, dom, o.Disk)
	if err != nil {
		return nil, err
	}
	if job, err := dom.BackupJob(ctx); err == nil {
		return nil, fmt.Errorf("%w: libvirt runs a backup job of the domain (socket %s)", ErrBusy, job.Socket)
	}
	lp := &libvirtPoll{dom: dom, target: target}
	v = &View{Disk: d, m: dom, o: o, lv: lp}
	defer func() {
		if err != nil {
			err = errors.Join(err, v.End(context.WithoutCancel(ctx), false))
			v = nil
		}
	}()
	if o.Tag == "" {
		v.Full, v.Why = true, "no poll state: a full pass at one point in time"
	} else if err := lp.pickCheckpoints(ctx, v); err != nil {
		return v, err
	}

	// The scratch folder, owned by the domain's QEMU user.
	if lp.scratch, err = os.MkdirTemp(o.Dir, scratchPrefix+"*"); err != nil {
		return v, fmt.Errorf("live: scratch folder: %w", err)
	}
	if err := giveToQEMU(lp.scratch, dom.PID()); err != nil {
		return v, err
	}
	v.sock = filepath.Join(lp.scratch, "nbd.sock")
	bk := libvirt.PullBackup{
		Socket:      v.sock,
		Incremental: v.Read,
		Disks:       []libvirt.BackupDisk{{Target: target, Scratch: filepath.Join(lp.scratch, "scratch-"+target+".qcow2")}},
		Checkpoint:  v.next,
	}
	if err := dom.BeginPullBackup(ctx, bk); err != nil {
		if strings.Contains(err.Error(), "already") || strings.Contains(err.Error(), "another job") {
			err = fmt.Errorf("%w: %v", ErrBusy, err)
		} else if strings.Contains(err.Error(), "Permission denied") {
			err = fmt.Errorf("%w (the scratch folder %s must be reachable by the domain's QEMU user: give --scratch a folder it can reach)", err, lp.scratch)
		}
		return v, err
	}
	v.Time = time.Now().UTC()
	lp.begun, lp.created = true, v.next != ""
	o.stop(1, "backup begun")

	job, err := dom.BackupJob(ctx)
	if err != nil {
		return v, err
	}
	var exp *libvirt.BackupExport
	for i := range job.Exports {
		if job.Exports[i].Target == target {
			exp = &job.Exports[i]
		}
	}
	if exp == nil {
		return v, fmt.Errorf("live: libvirt's backup job exports no disk %s", target)
	}
	dirtyCtx := ""
	if v.Read != "" {
		if dirtyCtx = exp.Context(); dirtyCtx == "" {
			return v, fmt.Errorf("live: libvirt's incremental backup of %s exports no dirty bitmap", target)
		}
	}
	if err := v.dial(ctx, job.Socket, exp.Name, dirtyCtx); err != nil {
		return v, err
	}
	o.stop(3, "export read")
	return v, v.openImage(ctx, "libvirt:"+dom.Name()+":"+target)
}

// findLibvirtDisk picks the disk id names (see BeginLibvirt) and returns
// it as QMP describes it, with its libvirt target.
func findLibvirtDisk(ctx context.Context, dom *libvirt.Domain, id string) (*Disk, string, error) {
	targets, err := dom.Disks(ctx)
	if err != nil {
		return nil, "", err
	}
	ds, err := Disks(ctx, dom)
	if err != nil {
		return nil, "", err
	}
	var names []string
	var pick *libvirt.DiskTarget
	for i, t := range targets {
		names = append(names, t.Target+" ("+t.File+")")
		if id == t.Target || id != "" && id == t.Alias {
			pick = &targets[i]
		}
	}
	if pick == nil && id != "" {
		d, err := FindDisk(ctx, dom, id)
		if err != nil {
			return nil, "", fmt.Errorf("%w (libvirt targets: %s)", err, strings.Join(names, "; "))
		}
		for i, t := range targets {
			if t.File != "" && t.File == d.File || t.Alias != "" && t.Alias == qdevID(d.QDev) {
				pick = &targets[i]
			}
		}
	}
	switch {
	case pick == nil && id == "" && len(targets) == 1:
		pick = &targets[0]
	case pick == nil && id == "":
		return nil, "", fmt.Errorf("live: the domain has %d disks; pick one with --disk: %s", len(targets), strings.Join(names, "; "))
	case pick == nil:
		return nil, "", fmt.Errorf("live: no disk %q; the domain has: %s", id, strings.Join(names, "; "))
	}
	for _, d := range ds {
		if pick.Alias != "" && qdevID(d.QDev) == pick.Alias || pick.File != "" && d.File == pick.File {
			return d, pick.Target, nil
		}
	}
	return nil, "", fmt.Errorf("live: QEMU has no block device for libvirt disk %s (%s, alias %s)", pick.Target, pick.File, pick.Alias)
}

// pickCheckpoints picks the checkpoint to read (the oldest tracking one of
// the tag: it covers the newer ones a killed poll left) and names the one
// to create.
func (lp *libvirtPoll) pickCheckpoints(ctx context.Context, v *View) error {
	names, err := lp.dom.Checkpoints(ctx)
	if err != nil {
		return err
	}
	var ts []trackBitmap
	for _, n := range names {
		if t, g, ok := parseTrack(n); ok && t == v.o.Tag {
			ts = append(ts, trackBitmap{Bitmap{Name: n}, g})
		}
	}
	slices.SortFunc(ts, func(a, b trackBitmap) int { return int(a.gen) - int(b.gen) })
	for _, t := range ts {
		lp.older = append(lp.older, t.Name)
	}
	if len(ts) == 0 {
		v.Gen = 1
		v.next = trackName(v.o.Tag, v.Gen)
		v.Full, v.Why = true, fmt.Sprintf("no checkpoint %strack-%s-* of domain %s (first poll; or it was deleted)", Prefix, v.o.Tag, lp.dom.Name())
		return nil
	}
	v.Gen = ts[len(ts)-1].gen + 1
	v.next = trackName(v.o.Tag, v.Gen)
	oldest := ts[0].Name
	// The checkpoint's bitmap on the node: missing or in-use (QEMU
	// stopped without storing it) makes its changes unknown.
	var bm *Bitmap
	for i := range v.Disk.Bitmaps {
		if v.Disk.Bitmaps[i].Name == oldest {
			bm = &v.Disk.Bitmaps[i]
		}
	}
	switch {
	case bm == nil:
		v.Full, v.Why = true, fmt.Sprintf("checkpoint %s has no bitmap on node %s (removed, or QEMU restarted without it)", oldest, v.Disk.Node)
	case bm.Inconsistent:
		v.Full, v.Why = true, fmt.Sprintf("checkpoint %s's bitmap is inconsistent (in-use: QEMU stopped without storing it)", oldest)
	case bm.Busy:
		return fmt.Errorf("%w: bitmap %s is busy", ErrBusy, oldest)
	default:
		v.Read = oldest
		v.merged = slices.Clone(lp.older[1:])
	}
	return nil
}

// giveToQEMU makes dir the QEMU process's (pid): libvirt's QEMU user
// creates the NBD socket there, and libvirt the scratch overlay.
func giveToQEMU(dir string, pid int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d", pid), &st); err != nil {
		return fmt.Errorf("live: the domain's QEMU (pid %d): %w", pid, err)
	}
	if err := os.Chown(dir, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("live: scratch folder %s for QEMU's user %d: %w", dir, st.Uid, err)
	}
	return nil
}

// end is End for a libvirt poll: the job aborted, the scratch folder
// removed, then the checkpoints: on success those before the new one are
// deleted, on failure the new one is.
func (lp *libvirtPoll) end(ctx context.Context, v *View, ok bool) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	var errs []error
	if v.Image != nil {
		errs = append(errs, v.Image.Close())
		v.Image = nil
	}
	if v.Client != nil {
		errs = append(errs, v.Client.Close())
		v.Client = nil
	}
	if lp.begun {
		if fs, _ := filepath.Glob(filepath.Join(lp.scratch, "scratch-*")); len(fs) > 0 {
			var st syscall.Stat_t
			if syscall.Stat(fs[0], &st) == nil {
				v.TempBytes = st.Blocks * 512
			}
		}
		if err := lp.dom.AbortJob(ctx); err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, waitGone(ctx, "libvirt backup job", func() (bool, error) {
				_, err := lp.dom.BackupJob(ctx)
				return err != nil, nil
			}))
		}
		lp.begun = false
	}
	v.o.stop(5, "backup job aborted")
	if lp.scratch != "" {
		if err := os.RemoveAll(lp.scratch); err != nil {
			errs = append(errs, err)
		}
		lp.scratch = ""
	}
	if lp.created {
		if ok {
			for _, c := range lp.older {
				errs = append(errs, lp.dom.DeleteCheckpoint(ctx, c))
			}
		} else {
			errs = append(errs, lp.dom.DeleteCheckpoint(ctx, v.next))
		}
		lp.created = false
	}
	return errors.Join(errs...)
}

// ReleaseLibvirt aborts the backup job a killed poll left on the domain
// (one on a socket in a vmscope scratch folder; another tool's job is left
// alone) and removes its scratch folder. Its checkpoints stay: the next
// poll reads from the oldest.
func ReleaseLibvirt(ctx context.Context, dom *libvirt.Domain) (*Released, error) {
	rel := &Released{}
	job, err := dom.BackupJob(ctx)
	if err != nil {
		return rel, nil // no job
	}
	dir := filepath.Dir(job.Socket)
	if !strings.HasPrefix(filepath.Base(dir), scratchPrefix) {
		return rel, nil
	}
	if err := dom.AbortJob(ctx); err != nil {
		return rel, err
	}
	err = waitGone(ctx, "libvirt backup job", func() (bool, error) {
		_, err := dom.BackupJob(ctx)
		return err != nil, nil
	})
	if err != nil {
		return rel, err
	}
	rel.Removed = append(rel.Removed, "backup job (socket "+job.Socket+")")
	if err := os.RemoveAll(dir); err != nil {
		return rel, err
	}
	rel.Removed = append(rel.Removed, "folder "+dir)
	return rel, nil
}

// ReadGen is the generation of the bitmap (or checkpoint) the poll read;
// 0 for a full poll. A libvirt poll after a killed one reads an older
// generation than Gen-1.
func (v *View) ReadGen() uint64 {
	_, g, _ := parseTrack(v.Read)
	return g
}
