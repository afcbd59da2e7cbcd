// Package imagescan scans a disk image with YARA: it walks every filesystem
// of the disk (or only the files a dirty poll found changed), streams their
// regular files to the scan engine (package scan), gathers the problems met
// on the way and records the verdicts of a dirty poll.
//
// Promises:
//
//   - A directory, inode or file that cannot be read is a [scan.FileError]
//     in the result and the walk goes on; problems of the disk itself
//     (fsparse.Disk.Problems) and of the poll are errors at "/".
//   - The result's errors are sorted (partition, path), as its findings are,
//     so reports are deterministic.
//   - A file is named by the same partition name in the result and in the
//     poll's verdicts: "" for a filesystem on the whole disk, the volume ID
//     ("p1"...) otherwise ([PartitionName]).
//   - [Commit] saves a poll only when every due file was read, so a file
//     that failed is due again at the next poll; a file a filter left out
//     gets no verdict and stays due.
//   - Scan stops when its context is cancelled and returns its error.
package imagescan

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/scan"
)

// ErrNotCommitted is returned by Commit when the poll state was left as it
// was because files could not be read: the next poll redoes this one.
var ErrNotCommitted = errors.New("poll state not updated")

// Scan scans the regular files of every volume of d (sel nil) or the files
// due in the dirty poll sel with rules, and returns the result with the
// walk's and the disk's problems among its errors.
func Scan(ctx context.Context, d *fsparse.Disk, rules *scan.Rules, sel *dirty.Selection, opts ...scan.Option) (*scan.Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	files := make(chan scan.File, 256)
	walkErrs := make(chan []scan.FileError, 1)
	if sel != nil {
		go func() { walkErrs <- feedSelection(ctx, sel, d, files) }()
	} else {
		go func() { walkErrs <- feed(ctx, d, files) }()
	}
	res, scanErr := scan.Scan(ctx, rules, files, opts...)
	cancel() // stops the walk if the scan ended early
	errs := <-walkErrs
	if scanErr != nil {
		return nil, scanErr
	}
	for _, p := range d.Problems {
		res.Errors = append(res.Errors, scan.FileError{Path: "/", Err: p})
	}
	res.Errors = append(res.Errors, errs...)
	sort.SliceStable(res.Errors, func(i, j int) bool {
		a, b := res.Errors[i], res.Errors[j]
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		return a.Path < b.Path
	})
	res.Summary.Errors = len(res.Errors)
	return res, nil
}

// Commit records the verdicts of the scan res of the poll sel (on disk d)
// and saves the poll state, but only when every due file was read:
// otherwise it returns ErrNotCommitted (wrapped, with the count) and
// leaves the state as it was. A file the scan left out by a filter
// (--include, --exclude, --max-filesize) gets no verdict: it stays due.
func Commit(ctx context.Context, d *fsparse.Disk, sel *dirty.Selection, res *scan.Result) error {
	if len(res.Errors) > 0 {
		return fmt.Errorf("%w: %d errors; the next poll redoes this one", ErrNotCommitted, len(res.Errors))
	}
	part := partitionNames(d)
	matched := map[string]bool{}
	for _, f := range res.Findings {
		matched[f.Partition+":"+f.Path] = true
		if f.Inode != 0 { // a match in a file's NTFS stream is the file's
			matched[fmt.Sprintf("%s:#%d", f.Partition, f.Inode)] = true
		}
	}
	for _, ch := range sel.Due() {
		if !sel.Read(ch) {
			continue // left out by a filter: still due
		}
		v := "clean"
		if matched[part[ch.Volume]+":"+ch.Path] || matched[fmt.Sprintf("%s:#%d", part[ch.Volume], ch.Ino)] {
			v = "match"
		}
		sel.SetVerdict(ch, v)
	}
	return sel.CommitContext(ctx)
}

// Filesystems describes the filesystems of d for a report. The
// caller fills in the image file's own path, format, size and layers.
func Filesystems(d *fsparse.Disk) []scan.FSInfo {
	var fss []scan.FSInfo
	for _, v := range d.Volumes {
		fss = append(fss, scan.FSInfo{Partition: v.ID, Type: v.Type, Label: v.Label, UUID: v.UUID})
	}
	return fss
}

// Progress returns a progress counter whose totals are the files and bytes
// in use on the ext4 volumes of d (from their superblocks), for
// scan.WithProgress.
func Progress(d *fsparse.Disk) *scan.Progress {
	progress := &scan.Progress{}
	for _, v := range d.Volumes {
		if v.Ext4() != nil {
			sb := v.Ext4().Super()
			progress.TotalFiles.Add(int64(sb.InodesCount - sb.FreeInodes))
			progress.TotalBytes.Add(int64(sb.BlocksCount-sb.FreeBlocks) * int64(sb.BlockSize))
		}
	}
	return progress
}

// feed walks every volume and sends its regular files to the scanner. A
// directory or inode that cannot be read becomes an error entry and the
// walk goes on. It closes files when done.
func feed(ctx context.Context, d *fsparse.Disk, files chan<- scan.File) []scan.FileError {
	defer close(files)
	owners, errs := guestOwners(d)
	for _, v := range d.Volumes {
		fail := func(e fsparse.Entry, err error) {
			errs = append(errs, scan.FileError{Partition: PartitionName(v), FS: v.Type, Path: e.Path, Inode: e.Ino, Err: err})
		}
		err := v.Walk(ctx, ".", func(e fsparse.Entry, err error) error {
			if err != nil {
				fail(e, err)
				return nil
			}
			if e.Type != "file" {
				return nil
			}
			var data fsparse.File
			if e.Ino != 0 && e.Stream == "" { // a stream (NTFS "file:stream") opens by path
				data, err = v.OpenInode(e.Ino)
			} else {
				data, err = v.Open(strings.TrimPrefix(e.Path, "/"))
			}
			if err != nil {
				fail(e, err)
				return nil
			}
			select {
			case files <- scan.File{Partition: PartitionName(v), FS: v.Type, Path: e.Path, Ino: e.Ino, Size: data.Size(), Mode: e.Mode, Uid: e.Uid, Gid: e.Gid, Owner: owners[v].Owner(e.Uid), Data: data}:
			case <-ctx.Done():
				return ctx.Err()
			}
			return nil
		})
		if err != nil && ctx.Err() == nil {
			fail(fsparse.Entry{Path: "/"}, err)
		}
	}
	return errs
}

// feedSelection sends the files a dirty poll found changed. A file that
// cannot be opened becomes an error entry.
func feedSelection(ctx context.Context, sel *dirty.Selection, d *fsparse.Disk, files chan<- scan.File) []scan.FileError {
	defer close(files)
	owners, errs := guestOwners(d)
	for _, e := range sel.Errors {
		errs = append(errs, scan.FileError{Path: "/", Err: e})
	}
	for _, ch := range sel.Due() {
		v, data, err := sel.Open(ch)
		if err != nil {
			errs = append(errs, scan.FileError{Partition: ch.Volume, Path: ch.Path, Inode: uint64(ch.Ino), Err: err})
			continue
		}
		f := scan.File{Partition: PartitionName(v), FS: v.Type, Path: ch.Path, Ino: uint64(ch.Ino), Size: data.Size(), Data: data}
		if v.Ext4() != nil {
			if in, err := v.Ext4().Inode(ch.Ino); err == nil {
				f.Mode, f.Uid, f.Gid = in.FileMode(), in.Uid, in.Gid
			}
		}
		f.Owner = owners[v].Owner(f.Uid)
		select {
		case files <- f:
		case <-ctx.Done():
			return errs
		}
		// NTFS: the named streams of a changed file are scanned with it.
		if sv, ok := v.FS.(streamOpener); ok {
			names, err := sv.StreamNames(uint64(ch.Ino))
			if err != nil {
				errs = append(errs, scan.FileError{Partition: ch.Volume, Path: ch.Path, Inode: uint64(ch.Ino), Err: err})
			}
			for _, name := range names {
				data, err := sv.OpenStream(uint64(ch.Ino), name)
				if err != nil {
					errs = append(errs, scan.FileError{Partition: ch.Volume, Path: ch.Path + ":" + name, Inode: uint64(ch.Ino), Err: err})
					continue
				}
				sf := f
				sf.Path, sf.Size, sf.Data = ch.Path+":"+name, data.Size(), data
				select {
				case files <- sf:
				case <-ctx.Done():
					return errs
				}
			}
		}
	}
	return errs
}

// streamOpener is a filesystem whose files have named streams (NTFS).
type streamOpener interface {
	StreamNames(ino uint64) ([]string, error)
	OpenStream(ino uint64, name string) (fsparse.File, error)
}

// guestOwners reads the user names of every filesystem that has an
// /etc/passwd, for the owner external. A filesystem without one (a
// separate /home or /var) takes the first one's that has (the root
// filesystem's, whose users own its files). A passwd that cannot be read is
// an error entry; its filesystem's owners are then uids.
func guestOwners(d *fsparse.Disk) (map[*fsparse.Volume]scan.Owners, []scan.FileError) {
	own := map[*fsparse.Volume]scan.Owners{}
	var errs []scan.FileError
	var first scan.Owners
	for _, v := range d.Volumes {
		f, err := v.Open("etc/passwd")
		if err != nil {
			continue // no passwd here (or not a regular file)
		}
		o, err := scan.ReadOwners(f, f.Size())
		if err != nil {
			errs = append(errs, scan.FileError{Partition: PartitionName(v), FS: v.Type, Path: "/etc/passwd", Err: fmt.Errorf("owner names: %w", err)})
			own[v] = scan.Owners{}
			continue
		}
		own[v] = o
		if first == nil {
			first = o
		}
	}
	for _, v := range d.Volumes {
		if _, ok := own[v]; !ok {
			own[v] = first
		}
	}
	return own, errs
}

// PartitionName is how scan results name the volume v: its ID ("p1"...),
// or "" for a filesystem on the whole disk.
func PartitionName(v *fsparse.Volume) string {
	if v.Partition.Index == 0 {
		return ""
	}
	return v.ID
}

// partitionNames maps each volume ID of d (as dirty changes name volumes)
// to its PartitionName.
func partitionNames(d *fsparse.Disk) map[string]string {
	m := make(map[string]string, len(d.Volumes))
	for _, v := range d.Volumes {
		m[v.ID] = PartitionName(v)
	}
	return m
}
