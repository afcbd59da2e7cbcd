package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/vmscope/vmscope/fsparse"
)

// KindWalk: the change was found by comparing full walks of both images.
const KindWalk Kind = "full-walk"

// walked is what a full walk remembers of one path.
type walked struct {
	e   fsparse.Entry
	sum string // sha256 of a regular file's content
	err error
}

// FullCompare compares two disks of the same VM by walking every
// filesystem of both, path by path, with the sha256 of every regular file:
// what virt-diff --checksum does, trusting no block-level tracking. It is
// the reference for Compare, and what to use for two images that are not
// of the same disk history (restored from a file-level backup, a rebuilt
// filesystem). A path is added, deleted, modified (type or content; its
// inode number is not compared) or metadata (mode, owner, size, links,
// times, symlink target: Fields). Files are hashed by one worker per CPU.
func FullCompare(ctx context.Context, old, cur *fsparse.Disk) (*Selection, error) {
	sel := &Selection{Source: "full-walk", Disk: cur, Stats: map[string]Stats{}}
	for _, v := range cur.Volumes {
		ov, err := old.Volume(v.ID)
		if err != nil {
			sel.Errors = append(sel.Errors, fmt.Errorf("%s: no such volume in the older image", v.ID))
			continue
		}
		a, errs := walkVolume(ctx, ov)
		sel.Errors = append(sel.Errors, errs...)
		b, errs := walkVolume(ctx, v)
		sel.Errors = append(sel.Errors, errs...)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		sel.Changes = append(sel.Changes, compareWalks(v.ID, a, b)...)
	}
	for _, v := range old.Volumes {
		if _, err := cur.Volume(v.ID); err != nil {
			sel.Errors = append(sel.Errors, fmt.Errorf("%s: no such volume in the newer image", v.ID))
		}
	}
	SortChanges(sel.Changes)
	return sel, nil
}

func compareWalks(vol string, a, b map[string]*walked) []Change {
	var out []Change
	change := func(w *walked, kind string, fields []string) {
		out = append(out, Change{Volume: vol, Path: w.e.Path, Paths: []string{w.e.Path}, Ino: uint32(w.e.Ino),
			Type: w.e.Type, Change: kind, Reasons: []Kind{KindWalk}, Fields: fields, Size: w.e.Size,
			Rescan: kind != Deleted && kind != Metadata && w.e.Type == "file"})
	}
	for p, x := range a {
		y, ok := b[p]
		if !ok {
			change(x, Deleted, nil)
			continue
		}
		if x.e.Type != y.e.Type || x.sum != y.sum || x.e.Target != y.e.Target {
			change(y, Modified, walkDiff(x.e, y.e))
		} else if f := walkDiff(x.e, y.e); len(f) > 0 {
			change(y, Metadata, f)
		}
	}
	for p, y := range b {
		if _, ok := a[p]; !ok {
			change(y, Added, nil)
		}
	}
	return out
}

// walkDiff names the metadata fields of a path that differ.
func walkDiff(a, b fsparse.Entry) []string {
	var f fields
	add := f.add
	add(a.Perm != b.Perm, "mode")
	add(a.Uid != b.Uid, "uid")
	add(a.Gid != b.Gid, "gid")
	add(a.Links != b.Links, "links")
	add(a.Size != b.Size, "size")
	add(!a.Mtime.Equal(b.Mtime), "mtime")
	add(!a.Ctime.Equal(b.Ctime), "ctime")
	add(!a.Atime.Equal(b.Atime), "atime")
	add((a.Crtime == nil) != (b.Crtime == nil) || a.Crtime != nil && !a.Crtime.Equal(*b.Crtime), "crtime")
	add(a.Target != b.Target, "target")
	return f
}

// walkVolume walks v and hashes its regular files. A directory or file that
// cannot be read is an error and keeps no digest.
func walkVolume(ctx context.Context, v *fsparse.Volume) (map[string]*walked, []error) {
	out := map[string]*walked{}
	var files []*walked
	var errs []error
	err := v.Walk(ctx, ".", func(e fsparse.Entry, err error) error {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", v.ID, e.Path, err))
		}
		w := &walked{e: e}
		out[e.Path] = w
		if e.Type == "file" && err == nil {
			files = append(files, w)
		}
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("%s: walk: %w", v.ID, err))
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(files)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(files) || ctx.Err() != nil {
					return
				}
				w := files[i]
				w.sum, w.err = hashPath(ctx, v, w.e, buf)
			}
		}()
	}
	wg.Wait()
	for _, w := range files {
		if w.err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", v.ID, w.e.Path, w.err))
		}
	}
	return out, errs
}

func hashPath(ctx context.Context, v *fsparse.Volume, e fsparse.Entry, buf []byte) (string, error) {
	var f fsparse.File
	var err error
	if v.Ext4() != nil {
		f, err = v.OpenInode(e.Ino)
	} else {
		f, err = v.Open(e.Path)
	}
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(ctxReader{ctx, f}, 0, f.Size()), buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
