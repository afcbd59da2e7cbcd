package timeline

import (
	"context"
	"fmt"
	"io/fs"
	"slices"

	"github.com/vmscope/vmscope/fsparse"
)

// FromEntry is the record of a live file: prefix goes before its path
// ("" on a single filesystem, "p2:" when several are listed together).
func FromEntry(prefix string, e *fsparse.Entry) Record {
	t := e.Mode.Type()
	r := Record{Volume: e.Volume, Name: prefix + e.Path, Ino: e.Ino, NameType: t, MetaType: t,
		Mode: e.Mode &^ fs.ModeType, Uid: e.Uid, Gid: e.Gid, Size: e.Size,
		Atime: e.Atime, Mtime: e.Mtime, Ctime: e.Ctime, Crtime: e.Crtime}
	if e.Mode&fs.ModeSymlink != 0 {
		r.Target = e.Target
	}
	return r
}

// Problem is what a walk could not read: the path and why. The walk goes
// on past it.
type Problem struct {
	Path string
	Err  error
}

func (p Problem) Error() string { return fmt.Sprintf("%s: %v", p.Path, p.Err) }

// Walk appends a record for everything below root on v (root itself is
// left out when it is a directory, as fls -r leaves it out), in walk order,
// and returns what it could not read.
func Walk(ctx context.Context, v *fsparse.Volume, root, prefix string, recs []Record) ([]Record, []Problem, error) {
	start, err := v.Lstat(root)
	if err != nil {
		return recs, nil, err
	}
	if e := v.Ext4(); e != nil && root == "." {
		// Room for every inode in use, so the records are not copied as
		// they grow (capped: the counts come from the superblock).
		sb := e.Super()
		if sb.FreeInodes < sb.InodesCount {
			recs = slices.Grow(recs, int(min(sb.InodesCount-sb.FreeInodes, 1<<20)))
		}
	}
	var probs []Problem
	err = v.Walk(ctx, root, func(e fsparse.Entry, err error) error {
		if err != nil {
			probs = append(probs, Problem{Path: prefix + e.Path, Err: err})
			if e.Path == start.Path || e.Type == "dir" {
				return nil
			}
		}
		if e.Problem != nil {
			probs = append(probs, Problem{Path: prefix + e.Path, Err: *e.Problem})
		}
		if e.Path == start.Path && start.Type == "dir" {
			return nil
		}
		recs = append(recs, FromEntry(prefix, &e))
		return nil
	})
	return recs, probs, err
}

// FromDeleted is the record of a deleted name or orphan inode, marked as
// fls -m marks it: " (deleted)", or " (deleted-realloc)" when the inode is
// in use again (its metadata is then the new file's).
func FromDeleted(prefix string, d *fsparse.Deleted) Record {
	r := Record{Volume: d.Volume, Name: prefix + d.Path, Ino: d.Ino, Deleted: true, Realloc: d.Realloc,
		NameType: d.NameType, NameUnknown: !d.NameTypeKnown}
	if !d.MetaKnown {
		r.MetaUnknown = true
		return r
	}
	r.MetaType = d.Mode.Type()
	r.Mode = d.Mode &^ fs.ModeType
	r.Uid, r.Gid, r.Size = d.Uid, d.Gid, d.Size
	r.Atime, r.Mtime, r.Ctime, r.Crtime = d.Atime, d.Mtime, d.Ctime, d.Crtime
	return r
}

// WalkDeleted appends a record for every deleted name below root on v and,
// from the root, every freed inode that no name names (as fls -r -m lists
// them), and returns what it could not read. A filesystem without deleted
// file support adds nothing.
func WalkDeleted(ctx context.Context, v *fsparse.Volume, root, prefix string, recs []Record) ([]Record, []Problem, error) {
	if v.Ext4() == nil {
		return recs, nil, nil
	}
	s, err := v.ScanDeleted(ctx, root)
	if err != nil {
		return recs, nil, err
	}
	var probs []Problem
	for _, p := range s.Problems {
		probs = append(probs, Problem{Path: prefix + p.Where, Err: p})
	}
	for i := range s.Deleted {
		recs = append(recs, FromDeleted(prefix, &s.Deleted[i]))
	}
	return recs, probs, nil
}

// Collect appends the records of Walk and then those of WalkDeleted for
// root on v, and returns the problems of both in that order: the same
// result as calling the two in turn. The two run at once, on their own
// goroutines (both read v, which is safe for concurrent use).
func Collect(ctx context.Context, v *fsparse.Volume, root, prefix string, recs []Record) ([]Record, []Problem, error) {
	var (
		del      []Record
		delProbs []Problem
		delErr   error
		done     = make(chan struct{})
	)
	if e := v.Ext4(); e != nil && root == "." {
		// Room for every inode in use and a sixteenth more for the
		// deleted names, so that appending those does not copy the
		// records (capped: the counts come from the superblock).
		sb := e.Super()
		if sb.FreeInodes < sb.InodesCount {
			n := min(sb.InodesCount-sb.FreeInodes, 1<<20)
			recs = slices.Grow(recs, int(n+n/16))
		}
	}
	go func() {
		defer close(done)
		del, delProbs, delErr = WalkDeleted(ctx, v, root, prefix, nil)
	}()
	recs, probs, err := Walk(ctx, v, root, prefix, recs)
	<-done
	if err != nil {
		return recs, nil, err
	}
	if delErr != nil {
		return recs, nil, delErr
	}
	return append(recs, del...), append(probs, delProbs...), nil
}
