package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/vmscope/vmscope/cow"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/qcow"
)

// ErrFastCommits: the ext4 journal of a volume that needs recovery holds
// fast commits, which recovery would replay and this package does not.
var ErrFastCommits = errors.New("dirty: journal fast commits not replayed")

// ErrOtherImage: the poll state was made for another image.
var ErrOtherImage = errors.New("dirty: the state belongs to another image")

// Snapshot is what the poll state keeps for one image between polls.
type Snapshot struct {
	Identity    string            `json:"identity"`
	RulesDigest string            `json:"rules_digest"`
	Source      string            `json:"source"` // the dirty source of the last poll
	Chunk       int64             `json:"chunk,omitempty"`
	Hashes      []uint64          `json:"-"` // block-hash index (hash source)
	Indexes     map[string]*Index `json:"-"` // per volume ID
	// Top is the top layer of the chain at the last poll (cow source):
	// the next poll's overlays are the layers from the top down to it.
	Top string `json:"top,omitempty"`
	// BitmapSets are the enabled, consistent bitmaps of the image at the
	// last poll (bitmap source) and their dirty ranges then. Each holds
	// every write since that poll, so the next poll may use any of them
	// (bitmap rotation); an enabled bitmap only grows, so one that holds
	// less now was cleared (or removed and added again) since.
	BitmapSets map[string][]rangeset.Range `json:"bitmap_sets,omitempty"`
	// Blocks are the hashes of 4 KiB blocks at the last poll (blocks.go):
	// for cow, of the blocks the overlays held; for bitmap, of the whole
	// disk.
	Blocks *BlockHashes `json:"-"`
}

// Store keeps snapshots between polls (package dirty/state: bbolt). Load
// returns nil, nil when the store is empty, and an error wrapping
// ErrOtherImage when it holds another image's state; its indexes may be
// stored ones (StoredIndex), read on demand. Save stores the snapshot in
// one transaction: an index with a Delta (the poll of a stored index) as
// its changes only, any other whole.
type Store interface {
	Load(identity string) (*Snapshot, error)
	Save(s *Snapshot) error
}

// Identity names the image a state belongs to: the disk size, the
// partition table ID, each filesystem's UUID and the path of the chain's
// base file (an overlay can be rotated; the base is the VM's disk).
func Identity(im *disk.Image, d *fsparse.Disk) string {
	var b strings.Builder
	fmt.Fprintf(&b, "size=%d table=%s/%s", d.Size, d.Table, d.TableID)
	for _, v := range d.Volumes {
		fmt.Fprintf(&b, " %s=%s:%s", v.ID, v.Type, v.UUID)
	}
	ls := im.Layers()
	fmt.Fprintf(&b, " base=%s", ls[len(ls)-1].Name())
	s := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(s[:16]) + " " + b.String()
}

// Selection is the outcome of a dirty poll for the scanner.
type Selection struct {
	Source  string   // the dirty source used: cow, bitmap:NAME, hash, full
	Changes []Change // every change found, all volumes
	Stats   map[string]Stats
	Errors  []error
	Disk    *fsparse.Disk

	store   Store
	next    *Snapshot
	closers []func() error
	// recovered holds the volumes read through their journal replay.
	recovered map[string]*fsparse.Volume
	// unhashed: the volumes whose new or changed files still need their
	// digest, recorded from the reads of the scan (Open) or at Commit.
	unhashed []unhashed
	pending  map[fileKey]bool // the files of unhashed with a list
	mu       sync.Mutex
	due      []Change
	dueOnce  sync.Once
	reads    map[fileKey]*hashingFile // opened, not yet read whole
	sums     map[fileKey]string       // read whole: their digests
}

type unhashed struct {
	v    *fsparse.Volume
	x    *Index
	inos []uint32 // nil: every regular file of x (a full index)
}

type fileKey struct {
	vol string
	ino uint32
}

// recover replaces v by its journal-recovered view when it needs one and
// returns the device ranges the replay changed. A replay that fails is an
// error of the selection; the volume is then read as it is on disk.
func (s *Selection) recover(ctx context.Context, v *fsparse.Volume) (*fsparse.Volume, rangeset.Set) {
	rv, ov, err := Recovered(ctx, v)
	if err != nil {
		s.Errors = append(s.Errors, err)
		return v, rangeset.Set{}
	}
	if ov != nil && ov.FastCommits > 0 {
		// What they changed may not be seen: an error keeps the poll
		// state where it was (the next poll redoes this one).
		s.Errors = append(s.Errors, fmt.Errorf("%s: %w: %d fast commits of journal transaction %d, logging inodes %v; e2fsck on a copy replays them, or poll again after the guest's next full commit",
			v.ID, ErrFastCommits, ov.FastCommits, ov.FirstSeq+uint32(ov.Transactions), ov.FastCommitInodes))
	}
	if rv != v {
		if s.recovered == nil {
			s.recovered = map[string]*fsparse.Volume{}
		}
		s.recovered[v.ID] = rv
	}
	return rv, replayedRanges(ov)
}

// OnClose registers f to run when the selection is closed (the caller's
// state database, a base image).
func (s *Selection) OnClose(f func() error) { s.closers = append(s.closers, f) }

// Close runs what OnClose registered, last first.
func (s *Selection) Close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	s.closers = nil
	return errors.Join(errs...)
}

// Due returns the changes whose content must be scanned (the same slice at
// every call: the caller must not modify it).
func (s *Selection) Due() []Change {
	s.dueOnce.Do(func() {
		n := 0
		for _, c := range s.Changes {
			if c.Rescan {
				n++
			}
		}
		s.due = make([]Change, 0, n)
		for _, c := range s.Changes {
			if c.Rescan {
				s.due = append(s.due, c)
			}
		}
	})
	return s.due
}

// Open opens the content of a due file.
func (s *Selection) Open(c Change) (*fsparse.Volume, fsparse.File, error) {
	v := s.recovered[c.Volume]
	if v == nil {
		var err error
		if v, err = s.Disk.Volume(c.Volume); err != nil {
			return nil, nil, err
		}
	}
	f, err := v.OpenInode(uint64(c.Ino))
	if err != nil || !c.Rescan || !s.pendingDigest(c.Volume, c.Ino) {
		return v, f, err
	}
	// A poll records the digest of a new or changed file from the
	// scanner's own reads instead of reading it twice.
	key := fileKey{c.Volume, c.Ino}
	hf := &hashingFile{File: f, h: sha256.New()}
	// Once read whole, only its digest is kept: a first poll opens every
	// file, and holding them all until Commit costs kilobytes a file.
	hf.done = func(sum string) {
		s.mu.Lock()
		if s.sums == nil {
			s.sums = map[fileKey]string{}
		}
		s.sums[key] = sum
		delete(s.reads, key)
		s.mu.Unlock()
	}
	s.mu.Lock()
	if s.reads == nil {
		s.reads = map[fileKey]*hashingFile{}
	}
	s.reads[key] = hf
	s.mu.Unlock()
	return v, hf, nil
}

func (s *Selection) pendingDigest(vol string, ino uint32) bool {
	if s.pending[fileKey{vol, ino}] {
		return true
	}
	for _, u := range s.unhashed {
		if u.x.Volume == vol && u.inos == nil {
			return true
		}
	}
	return false
}

// SetVerdict records the scan verdict of a due file for the state.
func (s *Selection) SetVerdict(c Change, verdict string) {
	if s.next == nil {
		return // a comparison of two images keeps no state
	}
	if x := s.next.Indexes[c.Volume]; x != nil {
		if r := x.mutable(c.Ino); r != nil {
			r.Verdict = verdict
		}
	}
}

// Commit stores the new state in one transaction. Call it only after the
// scan of the due files succeeded: a poll that dies changes nothing.
func (s *Selection) Commit() error { return s.CommitContext(context.Background()) }

// CommitContext is Commit; it first records the digest of every file the
// poll found new or changed (after a first poll: every file): from the
// reads of the files opened with Open and read whole, by reading the others
// (files the scan left out, or a poll that scanned nothing). A file that cannot be read keeps no digest: it is due
// whenever its blocks are dirty.
func (s *Selection) CommitContext(ctx context.Context) error {
	if s.store == nil {
		return nil
	}
	for _, u := range s.unhashed {
		known := map[uint32]string{}
		s.mu.Lock()
		for k, sum := range s.sums {
			if k.vol == u.x.Volume {
				known[k.ino] = sum
			}
		}
		for k, hf := range s.reads { // empty files, read by nobody
			if sum, ok := hf.sum(); ok && k.vol == u.x.Volume {
				known[k.ino] = sum
			}
		}
		s.mu.Unlock()
		if u.inos == nil {
			hashAll(ctx, u.v, u.x, known)
		}
		for _, ino := range u.inos {
			if ctx.Err() != nil {
				break
			}
			sum, ok := known[ino]
			if !ok {
				var err error
				if sum, err = hashFile(ctx, u.v, ino); err != nil {
					continue
				}
			}
			if r := u.x.mutable(ino); r != nil {
				r.SHA256 = sum
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	s.unhashed = nil
	return s.store.Save(s.next)
}

// Select finds the files of d (the disk of im) changed since the last poll
// recorded in st, with the dirty source src: "auto", "cow", "bitmap:NAME"
// or "hash". With an empty state it indexes everything and every regular
// file is due (the first poll is a full scan); when rulesDigest differs from
// the state's, every regular file is due too (a new rule must see old
// files), while the dirty mapping still updates the index.
func Select(ctx context.Context, im *disk.Image, d *fsparse.Disk, src string, st Store, rulesDigest string) (*Selection, error) {
	id := Identity(im, d)
	prev, err := st.Load(id)
	if err != nil {
		return nil, err
	}
	if rulesDigest == "" && prev != nil {
		// A poll that scans nothing (vmscope dirty) keeps the digest of
		// the rules the files were last scanned with.
		rulesDigest = prev.RulesDigest
	}
	src, err = pickSource(im, src)
	if err != nil {
		return nil, err
	}
	sel := &Selection{Source: src, Disk: d, store: st, Stats: map[string]Stats{},
		next: &Snapshot{Identity: id, RulesDigest: rulesDigest, Source: src, Indexes: map[string]*Index{}}}
	var dirty rangeset.Set
	full := prev == nil || prev.Source != src && src != "hash" && !rotatedBitmap(prev, src)
	switch {
	case src == "cow":
		dirty, err = sel.cowDirty(ctx, im, prev, &full)
	case strings.HasPrefix(src, "bitmap:"):
		dirty, err = sel.bitmapDirty(ctx, im, strings.TrimPrefix(src, "bitmap:"), prev, &full)
	case src == "hash":
		sel.next.Chunk = DefaultChunk
		var data rangeset.Set
		if data, err = im.DataRanges(ctx); err == nil {
			sel.next.Hashes, err = ChunkHashesData(ctx, im, im.Size(), DefaultChunk, data)
		}
		if err == nil && prev != nil {
			if prev.Chunk != DefaultChunk || prev.Hashes == nil {
				full = true
			}
			dirty = HashDirty(prev.Hashes, sel.next.Hashes, DefaultChunk, im.Size())
		}
	}
	if err != nil {
		return nil, err
	}
	rulesChanged := prev != nil && prev.RulesDigest != rulesDigest
	for _, v := range d.Volumes {
		if v.Ext4 == nil {
			sel.Errors = append(sel.Errors, fmt.Errorf("%s: %w", v.ID, ErrUnsupportedFS))
			continue
		}
		v, replayed := sel.recover(ctx, v)
		var x *Index
		if old := prevIndex(prev, v.ID); old != nil && !full {
			part := shift(dirty, v.Partition.Start, v.Partition.Size)
			part.AddSet(replayed)
			res, err := Poll(ctx, v, old, part, withDeferredHashes())
			if err != nil {
				return nil, err
			}
			x = res.New
			sel.unhashed = append(sel.unhashed, unhashed{v, x, res.unhashed})
			if sel.pending == nil {
				sel.pending = map[fileKey]bool{}
			}
			for _, ino := range res.unhashed {
				sel.pending[fileKey{v.ID, ino}] = true
			}
			sel.Changes = append(sel.Changes, res.Changes...)
			res.Stats.ReplayedBytes = replayed.Bytes()
			sel.Stats[v.ID] = res.Stats
			sel.Errors = append(sel.Errors, res.Errors...)
		} else {
			if x, err = BuildIndex(ctx, v); err != nil {
				return nil, err
			}
			// Later polls compare a file whose data blocks are dirty with
			// its digest: every digest is recorded by Commit.
			sel.unhashed = append(sel.unhashed, unhashed{v, x, nil})
			sel.Changes = append(sel.Changes, everything(x, KindFull)...)
		}
		if rulesChanged && !full {
			seen := map[uint32]bool{}
			for _, c := range sel.Changes {
				if c.Volume == v.ID && c.Rescan {
					seen[c.Ino] = true
				}
			}
			for _, c := range everything(x, KindRules) {
				if !seen[c.Ino] {
					sel.Changes = append(sel.Changes, c)
				}
			}
			if err := x.loadErr(); err != nil {
				return nil, fmt.Errorf("dirty: %s: poll state: %w", v.ID, err)
			}
		}
		sel.next.Indexes[v.ID] = x
	}
	SortChanges(sel.Changes)
	return sel, nil
}

// rotatedBitmap reports whether src is a bitmap that was enabled at the
// last poll, which used another bitmap: it holds every write since that
// poll (the rotation of incremental backup: a new bitmap is added and the
// old one disabled in one transaction, the poll reads the old one).
func rotatedBitmap(prev *Snapshot, src string) bool {
	name, ok := strings.CutPrefix(src, "bitmap:")
	_, enabled := prev.BitmapSets[name]
	return ok && strings.HasPrefix(prev.Source, "bitmap:") && enabled
}

// cowDirty returns the ranges written since the last poll according to the
// overlays: what the layers from the top down to the last poll's top hold
// (an external snapshot may have put new overlays above it), narrowed to
// the blocks whose bytes changed since that poll. A block the overlays did
// not hold then is compared with the layer below the last poll's top (a
// backing file: unchanged since); the others with their hash. When the last
// poll's top is gone from the chain (the overlay was committed or
// discarded), *full is set: only a full pass is safe.
func (sel *Selection) cowDirty(ctx context.Context, im *disk.Image, prev *Snapshot, full *bool) (rangeset.Set, error) {
	layers := im.Layers()
	sel.next.Top = absPath(layers[0].Name())
	k := 0
	if !*full {
		k = slices.IndexFunc(layers, func(l disk.Layer) bool { return absPath(l.Name()) == prev.Top })
		if k < 0 || k+1 >= len(layers) || prev.Blocks == nil {
			*full, k = true, 0
		}
	}
	d, err := cow.Dirty(ctx, im, k+1)
	if err != nil {
		return d, err
	}
	next := NewBlockHashes(nil)
	sel.next.Blocks = next
	if *full {
		// The hashes for the next poll.
		_, err = refine(ctx, im, im.Size(), d, refineRefs{next: next, nextOld: layers[1]})
		return d, err
	}
	// The blocks that differed from the layer below at the last poll are
	// looked at too: an overlay made anew at the same path (the VM
	// reverted) no longer holds them, and they changed back.
	known, err := prev.Blocks.Known()
	if err != nil {
		return d, fmt.Errorf("dirty: poll state: block hashes: %w", err)
	}
	// The last poll's hashes are of blocks that differed from the layer
	// below its top; the next poll's, of blocks that differ from the layer
	// below today's top.
	return refine(ctx, im, im.Size(), rangeset.Union(d, known),
		refineRefs{prev: prev.Blocks, next: next, old: layers[k+1], nextOld: layers[1]})
}

// bitmapDirty returns the ranges of bitmap name narrowed to the blocks
// whose bytes changed since the last poll (the bitmap is cumulative: it
// holds every write since it was enabled). The first poll hashes the whole
// disk.
func (sel *Selection) bitmapDirty(ctx context.Context, im *disk.Image, name string, prev *Snapshot, full *bool) (rangeset.Set, error) {
	top := qcowTop(im)
	sel.next.BitmapSets = map[string][]rangeset.Range{}
	var d rangeset.Set
	for _, b := range top.Bitmaps {
		if b.Enabled && !b.InUse {
			set, err := top.BitmapDirty(ctx, b.Name)
			if err != nil {
				return set, err
			}
			sel.next.BitmapSets[b.Name] = set.Ranges()
			if b.Name == name {
				d = set
			}
		}
	}
	if _, ok := sel.next.BitmapSets[name]; !ok { // disabled (rotated out), or refused
		var err error
		if d, err = top.BitmapDirty(ctx, name); err != nil {
			return d, err
		}
	}
	// An enabled bitmap only grows. One that holds less than it did at the
	// last poll was cleared, or removed and added again: the writes before
	// that are lost, only a full pass is safe.
	if !*full {
		if was, ok := prev.BitmapSets[name]; ok && !rangeset.Subtract(rangeset.Of(was...), d).Empty() {
			*full = true
		}
	}
	if *full || prev.Blocks == nil {
		*full = true
		var err error
		sel.next.Blocks, err = hashDisk(ctx, im, im.Size())
		return d, err
	}
	sel.next.Blocks = prev.Blocks
	return refine(ctx, im, im.Size(), d, refineRefs{prev: prev.Blocks, next: prev.Blocks})
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

func prevIndex(s *Snapshot, id string) *Index {
	if s == nil {
		return nil
	}
	return s.Indexes[id]
}

// everything lists every regular file of the index as due.
func everything(x *Index, why Kind) []Change {
	var out []Change
	x.loadAll()
	x.each(func(ino uint32, r *FileRec) {
		if !r.IsRegular() {
			return
		}
		ps := x.Paths(ino)
		if len(ps) == 0 {
			return
		}
		out = append(out, Change{Volume: x.Volume, Path: ps[0], Paths: ps, Ino: ino, Type: "file",
			Change: Modified, Reasons: []Kind{why}, Size: int64(r.Size), Rescan: true})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// shift clips guest ranges to a partition and makes them partition-relative.
func shift(s rangeset.Set, start, size int64) rangeset.Set {
	var out rangeset.Set
	for _, r := range s.Clip(start, start+size).Ranges() {
		out.Add(r.Start-start, r.End-start)
	}
	return out
}

// pickSource resolves "auto" (overlay, then an enabled bitmap, then the
// hash index) and checks the others.
func pickSource(im *disk.Image, src string) (string, error) {
	top := qcowTop(im)
	switch {
	case src == "" || src == "auto":
		if len(im.Layers()) > 1 {
			return "cow", nil
		}
		for _, b := range top.Bitmaps {
			if b.Enabled && !b.InUse {
				return "bitmap:" + b.Name, nil
			}
		}
		return "hash", nil
	case src == "cow":
		if len(im.Layers()) < 2 {
			return "", fmt.Errorf("%w: %s", cow.ErrNoOverlay, top.Path)
		}
	case strings.HasPrefix(src, "bitmap:"):
		if _, ok := top.Bitmap(strings.TrimPrefix(src, "bitmap:")); !ok {
			return "", fmt.Errorf("dirty source %q: %w in %s", src, qcow.ErrNoBitmap, top.Path)
		}
	case src == "hash":
	default:
		return "", fmt.Errorf("dirty source %q: want auto, cow, bitmap:NAME or hash", src)
	}
	return src, nil
}

// qcowTop is the top layer as a qcow2 layer, the one with bitmaps; a top
// of another format has none.
func qcowTop(im *disk.Image) *qcow.Layer {
	if l, ok := im.Top().(*qcow.Layer); ok {
		return l
	}
	return &qcow.Layer{Path: im.Top().Name()}
}

// Compare finds the files that differ between an older image old and a
// newer one cur of the same disk: when they share a layer only the ranges
// the layers above it hold are examined (cow.Between); otherwise the two
// disks are compared chunk by chunk. Every volume is indexed in old
// (metadata only) and polled in cur with the old bytes as reference.
func Compare(ctx context.Context, old *disk.Image, oldDisk *fsparse.Disk, cur *disk.Image, curDisk *fsparse.Disk) (*Selection, error) {
	dirty, ok, err := cow.Between(ctx, old, cur)
	if err != nil {
		return nil, err
	}
	src := "cow"
	if !ok {
		src = "compare"
		dirty, err = compareDisks(ctx, old, cur)
		if err != nil {
			return nil, err
		}
	}
	sel := &Selection{Source: src, Disk: curDisk, Stats: map[string]Stats{}}
	for _, v := range curDisk.Volumes {
		if v.Ext4 == nil {
			continue
		}
		ov, err := oldDisk.Volume(v.ID)
		if err != nil || ov.Ext4 == nil || ov.UUID != v.UUID || ov.Partition.Start != v.Partition.Start {
			sel.Errors = append(sel.Errors, fmt.Errorf("%s: no matching filesystem in the older image", v.ID))
			continue
		}
		ov, oldReplayed := sel.recover(ctx, ov)
		delete(sel.recovered, ov.ID) // Open reads the newer image
		v, replayed := sel.recover(ctx, v)
		x, err := BuildIndex(ctx, ov)
		if err != nil {
			return nil, err
		}
		part := shift(dirty, v.Partition.Start, v.Partition.Size)
		part.AddSet(replayed)
		part.AddSet(oldReplayed)
		res, err := Poll(ctx, v, x, part, WithOldDevice(ov.Device))
		if err != nil {
			return nil, err
		}
		res.Stats.ReplayedBytes = replayed.Bytes()
		sel.Changes = append(sel.Changes, res.Changes...)
		sel.Stats[v.ID] = res.Stats
		sel.Errors = append(sel.Errors, res.Errors...)
	}
	SortChanges(sel.Changes)
	return sel, nil
}

// compareDisks returns the 64 KiB chunks where two disks differ.
func compareDisks(ctx context.Context, a, b *disk.Image) (rangeset.Set, error) {
	size := max(a.Size(), b.Size())
	var out rangeset.Set
	const chunk = DefaultChunk
	x, y := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < size; off += chunk {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		n := min(chunk, size-off)
		clear(x)
		clear(y)
		if _, err := a.ReadAt(x[:n], off); err != nil && off+n <= a.Size() {
			return out, err
		}
		if _, err := b.ReadAt(y[:n], off); err != nil && off+n <= b.Size() {
			return out, err
		}
		if string(x[:n]) != string(y[:n]) {
			out.Add(off, off+n)
		}
	}
	return out, nil
}
