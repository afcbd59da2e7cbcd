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

// Poll maps dirty (byte ranges of the volume's device: the disk's dirty
// ranges translated through the volume's map) to changed files of v
// against old. Its steps, in order: the dirty blocks, the inode slots that
// changed in dirty inode-table blocks, the owners of dirty blocks in the
// previous index, each candidate inode compared with its record, the
// directories re-listed, then the paths, renames and digests of the
// changes.
func Poll(ctx context.Context, v *fsparse.Volume, old *Index, dirty rangeset.Set, opts ...Option) (*Result, error) {
	fsys, err := OpenFS(v)
	if err != nil {
		return nil, err
	}
	p := &poller{ctx: ctx, v: v, fs: fsys, old: old, res: &Result{},
		reasons: map[uint32]map[Kind]bool{}, newSums: map[uint64][]uint64{}, slotOf: map[uint32]*uint64{},
		dataDirty: map[uint32]bool{}, changes: map[uint32]*Change{}, replaced: map[uint32]bool{}, renamed: map[uint32]bool{}}
	for _, f := range opts {
		f(&p.o)
	}
	p.dirtyBlocks(dirty)
	if err := p.inodeSlots(); err != nil {
		return nil, err
	}
	p.ownedBlocks()
	p.count()
	// The new index shares the unchanged records with old; a record is
	// copied before it is changed. For a stored index the new one is a
	// delta: the records the poll changes, over the old ones.
	p.nx = old.derive(v.ID, v.UUID, fsys.BlockSize())
	p.nx.setRoot(fsys)
	if old.Root == 0 {
		old.setRoot(fsys) // a stored index does not keep it
	}
	if err := p.examine(); err != nil {
		return nil, err
	}
	for blk, s := range p.newSums {
		p.nx.setDigests(blk, s)
	}
	p.relistDirs()
	// A full new index builds its block → inode lookup when a later poll
	// of it in memory asks (ownedBy, childrenOf); one that is only saved
	// never needs it.
	p.addRenames()
	p.describe()
	if err := old.loadErr(); err != nil {
		return nil, fmt.Errorf("dirty: %s: poll state: %w", v.ID, err)
	}
	SortChanges(p.res.Changes)
	p.res.New = p.nx
	return p.res, nil
}

// poller is the work of one Poll.
type poller struct {
	ctx context.Context
	v   *fsparse.Volume
	fs  FS
	old *Index
	nx  *Index // the index after the poll
	o   pollOpts
	res *Result

	blocks    rangeset.Set // dirty, in filesystem blocks
	reasons   map[uint32]map[Kind]bool
	itSet     rangeset.Set        // dirty inode-table blocks
	newSums   map[uint64][]uint64 // their slot digests now
	slotOf    map[uint32]*uint64  // the digest of each candidate's slot
	dataDirty map[uint32]bool     // inodes with dirty data or xattr blocks
	changes   map[uint32]*Change  // by inode
	gone      []Change            // files whose inode number was reused
	replaced  map[uint32]bool     // inodes freed and reused
	relist    []uint32            // directories to re-list
	renamed   map[uint32]bool     // inodes whose names changed
}

func (p *poller) due(ino uint32, k Kind) {
	m := p.reasons[ino]
	if m == nil {
		m = map[Kind]bool{}
		p.reasons[ino] = m
	}
	m[k] = true
}

// mut returns the record of ino in the new index to change: its own copy.
func (p *poller) mut(ino uint32) *FileRec {
	r := p.nx.get(ino)
	if r != nil && r == p.old.get(ino) {
		r = r.clone()
		p.nx.put(ino, r)
	}
	return r
}

// dirtyBlocks turns the dirty byte ranges into filesystem blocks.
func (p *poller) dirtyBlocks(dirty rangeset.Set) {
	bs := p.fs.BlockSize()
	for _, r := range dirty.Clip(0, int64(p.fs.Blocks())*bs).Ranges() {
		p.blocks.Add(r.Start/bs, (r.End+bs-1)/bs)
		p.res.Stats.DirtyBytes += r.Len()
	}
	p.res.Stats.DirtyBlocks = p.blocks.Bytes()
}

// inodeSlots reads the dirty inode-table blocks: every slot whose digest
// changed since the last poll and that is live now or was live before
// makes its inode a candidate.
func (p *poller) inodeSlots() error {
	bs, isz := p.fs.BlockSize(), p.fs.SlotSize()
	tables := p.fs.InodeTables()
	raw := make([]byte, bs)
	for _, br := range p.blocks.Ranges() {
		for _, it := range tables {
			lo, hi := max(uint64(br.Start), it.Start), min(uint64(br.End), it.Start+it.Len)
			if lo >= hi {
				continue
			}
			p.itSet.Add(int64(lo), int64(hi))
			for blk := lo; blk < hi; blk++ {
				if err := p.ctx.Err(); err != nil {
					return err
				}
				if n, err := p.v.Device.ReadAt(raw, int64(blk)*bs); n < len(raw) {
					return fmt.Errorf("dirty: %s: inode table block %d: %v", p.v.ID, blk, err)
				}
				first, end := p.fs.SlotsIn(it, blk)
				sums, prev := slotSums(p.fs, it, blk, raw), p.old.slotDigests(blk)
				p.newSums[blk] = sums
				for ino := first; ino < end; ino++ {
					i := ino - first
					if !p.fs.Tracked(ino) || int(i) < len(prev) && prev[i] == sums[i] {
						continue // the slot is as the last poll saw it
					}
					if p.fs.SlotInUse(raw[int64(i)*isz:]) || p.old.get(ino) != nil {
						p.due(ino, KindInode)
						p.slotOf[ino] = &sums[i]
					}
				}
			}
		}
	}
	p.res.Stats.InodeTableBlocks = p.itSet.Bytes()
	return nil
}

// ownedBlocks makes the owners of dirty blocks in the previous index
// candidates (block → owner index).
func (p *poller) ownedBlocks() {
	var owned rangeset.Set
	for _, br := range p.blocks.Ranges() {
		p.old.ownedBy(uint64(br.Start), uint64(br.End), func(ow owner) {
			p.due(ow.ino, ow.kind)
			owned.Add(max(br.Start, int64(ow.start)), min(br.End, int64(ow.start+ow.n)))
			if ow.kind == KindData || ow.kind == KindXattr {
				p.dataDirty[ow.ino] = true
			}
		})
	}
	p.res.Stats.FileBlocks = rangeset.Subtract(owned, p.itSet).Bytes()
}

// count fills the rest of the stats: journal and other blocks, candidates.
func (p *poller) count() {
	st := &p.res.Stats
	st.JournalBlocks = rangeset.Intersect(p.fs.Journal(), p.blocks).Bytes()
	st.OtherBlocks = st.DirtyBlocks - st.InodeTableBlocks - st.FileBlocks - st.JournalBlocks
	st.Candidates = len(p.reasons)
}

// examine compares each candidate inode with its previous record: added,
// deleted, reused, content changed, metadata only.
func (p *poller) examine() error {
	inos := make([]uint32, 0, len(p.reasons))
	for ino := range p.reasons {
		inos = append(inos, ino)
	}
	slices.Sort(inos)
	for _, ino := range inos {
		if err := p.examineInode(ino); err != nil {
			return err
		}
	}
	return nil
}

func (p *poller) examineInode(ino uint32) error {
	v, old, nx := p.v, p.old, p.nx
	why := p.reasons[ino]
	or := old.get(ino)
	nr, err := p.fs.Record(ino)
	if err != nil {
		p.res.Errors = append(p.res.Errors, fmt.Errorf("%s: inode %d: %w", v.ID, ino, err))
		if s := p.slotOf[ino]; s != nil {
			*s = 0 // compare it again next poll
		}
		return nil
	}
	ch := &Change{Volume: v.ID, Ino: ino, Reasons: kinds(why)}
	switch {
	case or == nil && nr == nil:
		return nil
	case or == nil:
		nr.Names = nil
		nx.put(ino, nr)
		ch.Change, ch.Rescan = Added, nr.IsRegular()
		if nr.IsDir() {
			p.relist = append(p.relist, ino)
		}
	case nr == nil:
		nx.del(ino)
		ch.Change = Deleted
		if or.IsDir() {
			p.relist = append(p.relist, ino)
		}
	case or.Gen != nr.Gen || or.Mode.Type() != nr.Mode.Type():
		// The inode was freed and reused: the old file is gone and a
		// new one took its number.
		p.gone = append(p.gone, Change{Volume: v.ID, Ino: ino, Reasons: ch.Reasons, Change: Deleted,
			Paths: old.Paths(ino), Type: or.TypeName(), Size: int64(or.Size)})
		nr.Names = nil
		nx.put(ino, nr)
		ch.Change, ch.Rescan = Added, nr.IsRegular()
		if nr.IsDir() {
			p.relist = append(p.relist, ino)
		}
		if or.IsDir() {
			p.relist = append(p.relist, ino)
		}
		// Its old names are dropped when its parents are re-listed;
		// drop them now in case they are not.
		p.replaced[ino] = true
	default:
		nr.Names = slices.Clone(or.Names)
		content := or.Size != nr.Size ||
			or.Extents != nr.Extents || or.Target != nr.Target || (or.Inline || nr.Inline) && why[KindInode]
		if !content && p.dataDirty[ino] && nr.IsRegular() {
			content, err = contentChanged(p.ctx, v, &p.o, p.blocks, or, nr)
			if err != nil {
				p.res.Errors = append(p.res.Errors, fmt.Errorf("%s: inode %d: %w", v.ID, ino, err))
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
			p.relist = append(p.relist, ino)
		}
	}
	if ch.Change != "" {
		p.changes[ino] = ch
	}
	return nil
}

// relistDirs compares the entries of each directory to re-list with its
// previous entries, and moves the names in the new index.
func (p *poller) relistDirs() {
	old, nx := p.old, p.nx
	for _, d := range p.relist {
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
			ents, err := p.fs.ReadDir(d)
			if err != nil {
				p.res.Errors = append(p.res.Errors, fmt.Errorf("%s: directory inode %d: %w", p.v.ID, d, err))
				continue
			}
			for _, e := range ents {
				if e.Ino != d && nx.get(e.Ino) != nil {
					after[e.Name] = e.Ino
				}
			}
		}
		for name, c := range before {
			if after[name] == c && !p.replaced[c] {
				continue
			}
			if r := p.mut(c); r != nil {
				r.Names = slices.DeleteFunc(r.Names, func(l Link) bool { return l == Link{d, name} })
				p.renamed[c] = true
			}
		}
		for name, c := range after {
			// A reused inode number keeps its name in the listing, but
			// the new file has no names yet: add them.
			if before[name] == c && !p.replaced[c] {
				continue
			}
			r := p.mut(c)
			if !slices.Contains(r.Names, Link{d, name}) {
				r.Names = append(r.Names, Link{d, name})
				sortLinks(r.Names)
			}
			p.renamed[c] = true
		}
	}
}

// addRenames reports the inodes whose names alone changed.
func (p *poller) addRenames() {
	for c := range p.renamed {
		if p.changes[c] != nil || p.nx.get(c) == nil {
			continue
		}
		p.changes[c] = &Change{Volume: p.v.ID, Ino: c, Change: Renamed, Reasons: []Kind{KindParentDir}}
	}
}

// describe gives every change its paths, type and size, and the content
// digest of a new or changed file (now, or deferred to the scan's reads),
// and puts the changes in the result.
func (p *poller) describe() {
	old, nx := p.old, p.nx
	for ino, ch := range p.changes {
		r := nx.get(ino)
		switch {
		case ch.Change == Deleted:
			r = old.get(ino)
			ch.Paths = old.Paths(ino)
		case p.replaced[ino]:
			ch.Paths = nx.Paths(ino)
		default:
			ch.Paths = nx.Paths(ino)
			if old.get(ino) != nil {
				if op := old.Paths(ino); !slices.Equal(op, ch.Paths) {
					ch.OldPaths = op
				}
			}
			if ch.Change == Renamed && ch.OldPaths == nil {
				delete(p.changes, ino) // a link moved and came back
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
		if p.o.deferHash && ch.Rescan && r.IsRegular() && ch.Change != Deleted {
			if r.SHA256 == "" { // else contentChanged hashed it
				p.res.unhashed = append(p.res.unhashed, ino)
			}
		} else if p.o.hash && ch.Rescan && r.IsRegular() && ch.Change != Deleted {
			sum, err := hashFile(p.ctx, p.v, ino)
			if err != nil {
				p.res.Errors = append(p.res.Errors, fmt.Errorf("%s: %s: %w", p.v.ID, ch.Path, err))
			}
			p.mut(ino).SHA256 = sum
		}
	}
	for _, ch := range p.changes {
		p.res.Changes = append(p.res.Changes, *ch)
	}
	for _, ch := range p.gone {
		if len(ch.Paths) > 0 {
			ch.Path = ch.Paths[0]
		} else {
			ch.Path = fmt.Sprintf("<inode %d>", ch.Ino)
		}
		p.res.Changes = append(p.res.Changes, ch)
	}
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
