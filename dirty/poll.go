package dirty

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// What happened to a file.
const (
	Added    = "added"
	Deleted  = "deleted"
	Modified = "modified" // content (or, for a directory, entries) changed
	Metadata = "metadata" // only inode metadata changed: not re-scanned
	Renamed  = "renamed"  // only names changed
)

// Change is one file found changed, and why.
type Change struct {
	Volume   string   `json:"volume"`
	Path     string   `json:"path"`
	Paths    []string `json:"paths,omitempty"`     // every current path (hard links)
	OldPaths []string `json:"old_paths,omitempty"` // previous paths, when they differ
	Ino      uint32   `json:"inode"`
	Type     string   `json:"type"`
	Change   string   `json:"change"`
	Reasons  []Kind   `json:"reasons"`          // the kinds of dirty block that led to it
	Fields   []string `json:"fields,omitempty"` // the metadata that changed
	Size     int64    `json:"size"`
	// Rescan: the content of a regular file is new or changed; it must be
	// scanned. Metadata-only changes and directories are not.
	Rescan bool `json:"rescan"`
}

// Stats counts what a poll looked at.
type Stats struct {
	DirtyBytes       int64 `json:"dirty_bytes"`
	DirtyBlocks      int64 `json:"dirty_blocks"`
	InodeTableBlocks int64 `json:"inode_table_blocks"`
	FileBlocks       int64 `json:"file_blocks"`    // owned by a file in the previous index
	JournalBlocks    int64 `json:"journal_blocks"` // not files
	OtherBlocks      int64 `json:"other_blocks"`   // free space, bitmaps, descriptors, new allocations
	Candidates       int   `json:"candidates"`     // inodes examined
	// ReplayedBytes: device bytes read from the journal's committed
	// transactions instead of their home blocks (a journal needing
	// recovery); they count as dirty.
	ReplayedBytes int64 `json:"replayed_bytes,omitempty"`
}

// Result of a poll of one volume.
type Result struct {
	Changes []Change
	New     *Index // the index after the poll, for the state
	Stats   Stats
	Errors  []error // files that could not be read (the poll went on)

	unhashed []uint32 // due files left without a digest (withDeferredHashes)
}

type pollOpts struct {
	old       io.ReaderAt
	hash      bool
	deferHash bool
}

// Option changes a poll.
type Option func(*pollOpts)

// WithOldDevice gives the old view of the volume (the partition's bytes in
// the base image): a file whose only dirty blocks are data blocks is
// reported when those blocks' bytes differ from the old view's.
func WithOldDevice(r io.ReaderAt) Option { return func(o *pollOpts) { o.old = r } }

// WithHashes keeps content digests: a file due only for dirty data blocks
// is compared with its sha256 in the previous index, and every file whose
// content changed gets its new sha256 recorded.
func WithHashes() Option { return func(o *pollOpts) { o.hash = true } }

// withDeferredHashes is WithHashes, but the due files get their digest
// later (Select: from the scan's reads, at Commit): Result.unhashed.
func withDeferredHashes() Option {
	return func(o *pollOpts) { o.hash, o.deferHash = true, true }
}

// Poll maps dirty (byte ranges of the volume's device, i.e. guest ranges
// minus the partition start) to changed files of v against old.
func Poll(ctx context.Context, v *fsparse.Volume, old *Index, dirty rangeset.Set, opts ...Option) (*Result, error) {
	var o pollOpts
	for _, f := range opts {
		f(&o)
	}
	if v.Ext4() == nil {
		return nil, fmt.Errorf("dirty: volume %s is %s: %w", v.ID, v.Type, ErrUnsupportedFS)
	}
	g := readGeometry(v.Ext4())
	res := &Result{}
	bs := g.bs
	var blocks rangeset.Set // in filesystem blocks
	for _, r := range dirty.Clip(0, int64(g.blocks)*bs).Ranges() {
		blocks.Add(r.Start/bs, (r.End+bs-1)/bs)
		res.Stats.DirtyBytes += r.Len()
	}
	res.Stats.DirtyBlocks = blocks.Bytes()

	reasons := map[uint32]map[Kind]bool{}
	due := func(ino uint32, k Kind) {
		m := reasons[ino]
		if m == nil {
			m = map[Kind]bool{}
			reasons[ino] = m
		}
		m[k] = true
	}

	// Inode-table blocks: every slot that is live now or was live before.
	var itSet rangeset.Set
	newSums := map[uint64][]uint64{}
	slotOf := map[uint32]*uint64{}
	runs := g.itableRuns()
	raw := make([]byte, bs)
	for _, br := range blocks.Ranges() {
		for _, it := range runs {
			lo, hi := max(uint64(br.Start), it.start), min(uint64(br.End), it.start+it.n)
			if lo >= hi {
				continue
			}
			itSet.Add(int64(lo), int64(hi))
			for blk := lo; blk < hi; blk++ {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				if n, err := v.Device.ReadAt(raw, int64(blk)*bs); n < len(raw) {
					return nil, fmt.Errorf("dirty: %s: inode table block %d: %v", v.ID, blk, err)
				}
				first, end := g.inodesInBlock(it.group, blk)
				sums, prev := slotSums(g, it.group, blk, raw), old.slotDigests(blk)
				newSums[blk] = sums
				for ino := first; ino < end; ino++ {
					i := ino - first
					if !tracked(g, ino) || int(i) < len(prev) && prev[i] == sums[i] {
						continue // the slot is as the last poll saw it
					}
					slot := raw[int64(i)*g.isz:]
					if rawInUse(slot) || old.get(ino) != nil {
						due(ino, KindInode)
						slotOf[ino] = &sums[i]
					}
				}
			}
		}
	}
	res.Stats.InodeTableBlocks = itSet.Bytes()

	// Blocks owned by files of the previous index.
	var owned rangeset.Set
	dataDirty := map[uint32]bool{}
	for _, br := range blocks.Ranges() {
		old.ownedBy(uint64(br.Start), uint64(br.End), func(ow owner) {
			due(ow.ino, ow.kind)
			owned.Add(max(br.Start, int64(ow.start)), min(br.End, int64(ow.start+ow.n)))
			if ow.kind == KindData || ow.kind == KindXattr {
				dataDirty[ow.ino] = true
			}
		})
	}
	owned = rangeset.Subtract(owned, itSet)
	res.Stats.FileBlocks = owned.Bytes()
	if g.journal != 0 {
		if ext, err := v.Ext4().Extents(g.journal); err == nil {
			var j rangeset.Set
			for _, e := range ext {
				j.Add(int64(e.Physical), int64(e.Physical+e.Len))
			}
			res.Stats.JournalBlocks = rangeset.Intersect(j, blocks).Bytes()
		}
	}
	res.Stats.OtherBlocks = res.Stats.DirtyBlocks - res.Stats.InodeTableBlocks - res.Stats.FileBlocks - res.Stats.JournalBlocks
	res.Stats.Candidates = len(reasons)

	// The new index shares the unchanged records with old; a record is
	// copied before it is changed.
	// For a stored index the new one is a delta: the records the poll
	// changes, over the old ones.
	nx := old.derive(v.ID, v.UUID, bs)
	mut := func(ino uint32) *FileRec {
		r := nx.get(ino)
		if r != nil && r == old.get(ino) {
			r = r.clone()
			nx.put(ino, r)
		}
		return r
	}

	changes := map[uint32]*Change{}
	var gone []Change
	replaced := map[uint32]bool{}
	var relist []uint32
	inos := make([]uint32, 0, len(reasons))
	for ino := range reasons {
		inos = append(inos, ino)
	}
	slices.Sort(inos)
	for _, ino := range inos {
		why := reasons[ino]
		or := old.get(ino)
		nr, err := readRec(v, ino)
		if err != nil {
			res.Errors = append(res.Errors, fmt.Errorf("%s: inode %d: %w", v.ID, ino, err))
			if p := slotOf[ino]; p != nil {
				*p = 0 // compare it again next poll
			}
			continue
		}
		ch := &Change{Volume: v.ID, Ino: ino, Reasons: kinds(why)}
		switch {
		case or == nil && nr == nil:
			continue
		case or == nil:
			nr.Names = nil
			nx.put(ino, nr)
			ch.Change, ch.Rescan = Added, nr.IsRegular()
			if nr.IsDir() {
				relist = append(relist, ino)
			}
		case nr == nil:
			nx.del(ino)
			ch.Change = Deleted
			if or.IsDir() {
				relist = append(relist, ino)
			}
		case or.Gen != nr.Gen || or.Mode&0xF000 != nr.Mode&0xF000:
			// The inode was freed and reused: the old file is gone and a
			// new one took its number.
			gone = append(gone, Change{Volume: v.ID, Ino: ino, Reasons: ch.Reasons, Change: Deleted,
				Paths: old.Paths(ino), Type: or.TypeName(), Size: int64(or.Size)})
			nr.Names = nil
			nx.put(ino, nr)
			ch.Change, ch.Rescan = Added, nr.IsRegular()
			if nr.IsDir() {
				relist = append(relist, ino)
			}
			if or.IsDir() {
				relist = append(relist, ino)
			}
			// Its old names are dropped when its parents are re-listed;
			// drop them now in case they are not.
			replaced[ino] = true
		default:
			nr.Names = slices.Clone(or.Names)
			content := or.Size != nr.Size ||
				or.Extents != nr.Extents || or.Target != nr.Target || (or.Inline || nr.Inline) && why[KindInode]
			if !content && dataDirty[ino] && nr.IsRegular() {
				content, err = contentChanged(ctx, v, &o, blocks, or, nr)
				if err != nil {
					res.Errors = append(res.Errors, fmt.Errorf("%s: inode %d: %w", v.ID, ino, err))
					content = true
				}
			}
			if !content {
				nr.SHA256, nr.Verdict = or.SHA256, or.Verdict
			}
			ch.Fields = metaDiff(or, nr)
			if !content && len(ch.Fields) == 0 && sameMap(or, nr) {
				nr = or // nothing to store
			} else {
				nx.put(ino, nr)
			}
			switch {
			case content:
				ch.Change, ch.Rescan = Modified, nr.IsRegular()
			case len(ch.Fields) > 0:
				ch.Change = Metadata
			}
			if nr.IsDir() && (content || why[KindDir] || why[KindInode]) {
				relist = append(relist, ino)
			}
		}
		if ch.Change != "" {
			changes[ino] = ch
		}
	}

	for blk, s := range newSums {
		nx.setDigests(blk, s)
	}

	// Directories: compare the entries with the previous ones.
	renamed := map[uint32]bool{}
	for _, d := range relist {
		before := map[string]uint32{}
		if or := old.get(d); or != nil {
			for _, c := range old.childrenOf(d) {
				cr := old.get(c)
				if cr == nil {
					continue
				}
				for _, l := range cr.Names {
					if l.Parent == d {
						before[l.Name] = c
					}
				}
			}
		}
		after := map[string]uint32{}
		// A directory whose inode number a file took now has no entries.
		if r := nx.get(d); r != nil && r.IsDir() {
			ents, err := v.Ext4().ReadDirInode(d)
			if err != nil {
				res.Errors = append(res.Errors, fmt.Errorf("%s: directory inode %d: %w", v.ID, d, err))
				continue
			}
			for _, e := range ents {
				if e.Ino != d && nx.get(e.Ino) != nil {
					after[e.Name] = e.Ino
				}
			}
		}
		for name, c := range before {
			if after[name] == c && !replaced[c] {
				continue
			}
			if r := mut(c); r != nil {
				r.Names = slices.DeleteFunc(r.Names, func(l Link) bool { return l == Link{d, name} })
				renamed[c] = true
			}
		}
		for name, c := range after {
			// A reused inode number keeps its name in the listing, but
			// the new file has no names yet: add them.
			if before[name] == c && !replaced[c] {
				continue
			}
			r := mut(c)
			if !slices.Contains(r.Names, Link{d, name}) {
				r.Names = append(r.Names, Link{d, name})
				sortLinks(r.Names)
			}
			renamed[c] = true
		}
	}
	if !nx.stored() {
		nx.index()
	}

	for c := range renamed {
		if changes[c] != nil {
			continue
		}
		r := nx.get(c)
		if r == nil {
			continue
		}
		changes[c] = &Change{Volume: v.ID, Ino: c, Change: Renamed, Reasons: []Kind{KindParentDir}}
	}
	for ino, ch := range changes {
		r := nx.get(ino)
		switch {
		case ch.Change == Deleted:
			r = old.get(ino)
			ch.Paths = old.Paths(ino)
		case replaced[ino]:
			ch.Paths = nx.Paths(ino)
		default:
			ch.Paths = nx.Paths(ino)
			if old.get(ino) != nil {
				if op := old.Paths(ino); !slices.Equal(op, ch.Paths) {
					ch.OldPaths = op
				}
			}
			if ch.Change == Renamed && ch.OldPaths == nil {
				delete(changes, ino) // a link moved and came back
				continue
			}
		}
		ch.Type = r.TypeName()
		ch.Size = int64(r.Size)
		if len(ch.Paths) > 0 {
			ch.Path = ch.Paths[0]
		} else {
			ch.Path = fmt.Sprintf("<inode %d>", ino) // live but unreachable (orphan)
		}
		if o.deferHash && ch.Rescan && r.IsRegular() && ch.Change != Deleted {
			if r.SHA256 == "" { // else contentChanged hashed it
				res.unhashed = append(res.unhashed, ino)
			}
		} else if o.hash && ch.Rescan && r.IsRegular() && ch.Change != Deleted {
			sum, err := hashFile(ctx, v, ino)
			if err != nil {
				res.Errors = append(res.Errors, fmt.Errorf("%s: %s: %w", v.ID, ch.Path, err))
			}
			mut(ino).SHA256 = sum
		}
	}
	for _, ch := range changes {
		res.Changes = append(res.Changes, *ch)
	}
	for _, ch := range gone {
		if len(ch.Paths) > 0 {
			ch.Path = ch.Paths[0]
		} else {
			ch.Path = fmt.Sprintf("<inode %d>", ch.Ino)
		}
		res.Changes = append(res.Changes, ch)
	}
	if err := old.loadErr(); err != nil {
		return nil, fmt.Errorf("dirty: %s: poll state: %w", v.ID, err)
	}
	SortChanges(res.Changes)
	res.New = nx
	return res, nil
}

// SortChanges orders changes by volume, path and inode.
func SortChanges(cs []Change) {
	sort.Slice(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.Volume != b.Volume {
			return a.Volume < b.Volume
		}
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.Ino < b.Ino
	})
}

func kinds(m map[Kind]bool) []Kind {
	out := make([]Kind, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// sameMap reports whether two records of one inode hold the same blocks.
func sameMap(a, b *FileRec) bool {
	return a.Extents == b.Extents && a.Inline == b.Inline && a.ReadErr == b.ReadErr && slices.Equal(a.Runs, b.Runs)
}

// fields collects the names of the fields that differ.
type fields []string

func (f *fields) add(differs bool, name string) {
	if differs {
		*f = append(*f, name)
	}
}

// metaDiff names the metadata fields that differ.
func metaDiff(a, b *FileRec) []string {
	var f fields
	add := f.add
	add(a.Mode != b.Mode, "mode")
	add(a.Uid != b.Uid, "uid")
	add(a.Gid != b.Gid, "gid")
	add(a.Links != b.Links, "links")
	add(a.Size != b.Size, "size")
	add(a.Mtime != b.Mtime, "mtime")
	add(a.Ctime != b.Ctime, "ctime")
	add(a.Atime != b.Atime, "atime")
	add(a.Crtime != b.Crtime, "crtime")
	add(a.Flags != b.Flags, "flags")
	add(a.Xattr != b.Xattr, "xattr")
	add(a.Gen != b.Gen, "generation")
	add(a.Target != b.Target, "target")
	return f
}

// contentChanged decides whether a file whose block map did not change but
// some of whose data blocks are dirty really has new content.
func contentChanged(ctx context.Context, v *fsparse.Volume, o *pollOpts, dirty rangeset.Set, or, nr *FileRec) (bool, error) {
	if o.old != nil {
		bs := int64(v.BlockSize)
		a, b := make([]byte, bs), make([]byte, bs)
		for _, run := range nr.Runs {
			if run.Kind != KindData && run.Kind != KindXattr {
				continue
			}
			for _, r := range dirty.Clip(int64(run.Start), int64(run.Start+run.Len)).Ranges() {
				for blk := r.Start; blk < r.End; blk++ {
					if err := ctx.Err(); err != nil {
						return false, err
					}
					na, _ := o.old.ReadAt(a, blk*bs)
					nb, _ := v.Device.ReadAt(b, blk*bs)
					if na != nb || !bytes.Equal(a[:na], b[:nb]) {
						return true, nil
					}
				}
			}
		}
		return false, nil
	}
	if o.hash && or.SHA256 != "" && nr.IsRegular() {
		sum, err := hashFile(ctx, v, nr.Ino)
		if err != nil {
			return true, err
		}
		nr.SHA256 = sum
		return sum != or.SHA256, nil
	}
	return true, nil // nothing to compare with: the dirty blocks say it may have
}
