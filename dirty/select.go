package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// ErrFastCommits: the ext4 journal of a volume that needs recovery holds
// fast commits, which recovery would replay and this package does not.
var ErrFastCommits = errors.New("dirty: journal fast commits not replayed")

// ErrOtherImage: the poll state was made for another image.
var ErrOtherImage = errors.New("dirty: the state belongs to another image")

// Snapshot is what the poll state keeps for one image between polls: the
// cursor of its dirty source, the file index of each volume, and apart from
// both the files changed since their last scan.
type Snapshot struct {
	Identity    string `json:"identity"`
	RulesDigest string `json:"rules_digest"`
	Cursor
	Indexes map[string]*Index `json:"-"` // per volume ID
	// Unscanned is the scan side of the state, apart from the cursor
	// above: per volume, the regular files whose content changed since
	// they were last scanned with RulesDigest. A poll that scans nothing
	// (vmscope dirty) moves the cursor and adds the files it found
	// changed here; a scan poll scans them with its own changes and
	// removes those it gave a verdict.
	Unscanned map[string][]uint32 `json:"unscanned,omitempty"`
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
	// unscanned: the files of the last state's Unscanned that this poll
	// did not find changed again (they are due all the same).
	unscanned []Change
	scanned   map[fileKey]bool // the due files given a verdict
	read      map[fileKey]bool // the files opened with Open and read
	mu        sync.Mutex
	due       []Change
	dueOnce   sync.Once
	reads     map[fileKey]*hashingFile // opened, not yet read whole
	sums      map[fileKey]string       // read whole: their digests
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

// Due returns the changes whose content must be scanned: the files this
// poll found new or changed, and those an earlier poll that scanned
// nothing found changed (reason KindUnscanned). It is the same slice at
// every call: the caller must not modify it.
func (s *Selection) Due() []Change {
	s.dueOnce.Do(func() {
		n := len(s.unscanned)
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
		s.due = append(s.due, s.unscanned...)
		SortChanges(s.due)
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
	if err != nil {
		return v, f, err
	}
	key := fileKey{c.Volume, c.Ino}
	f = &readFile{File: f, read: func() {
		s.mu.Lock()
		if s.read == nil {
			s.read = map[fileKey]bool{}
		}
		s.read[key] = true
		s.mu.Unlock()
	}}
	if !c.Rescan || !s.pendingDigest(c.Volume, c.Ino) {
		return v, f, err
	}
	// A poll records the digest of a new or changed file from the
	// scanner's own reads instead of reading it twice.
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

// readFile notes that its content was read.
type readFile struct {
	fsparse.File
	once sync.Once
	read func()
}

func (f *readFile) ReadAt(p []byte, off int64) (int, error) {
	f.once.Do(f.read)
	return f.File.ReadAt(p, off)
}

// Read reports whether the content of c, opened with Open, was read (a
// file the scanner left out by a path filter or a size limit never is: it
// must get no verdict, and stays due).
func (s *Selection) Read(c Change) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read[fileKey{c.Volume, c.Ino}]
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
	s.mu.Lock()
	if s.scanned == nil {
		s.scanned = map[fileKey]bool{}
	}
	s.scanned[fileKey{c.Volume, c.Ino}] = true
	s.mu.Unlock()
	if x := s.next.Indexes[c.Volume]; x != nil {
		if r := x.mutable(c.Ino); r != nil {
			r.Verdict = verdict
		}
	}
}

// Record returns the new index record of a due file (nil when the
// selection keeps no state or the file has none). It is read-only.
func (s *Selection) Record(c Change) *FileRec {
	if s.next == nil {
		return nil
	}
	if x := s.next.Indexes[c.Volume]; x != nil {
		return x.get(c.Ino)
	}
	return nil
}

// SetDigest records the content digest of a due file known from elsewhere:
// the caller vouches that the file's bytes are the ones sum was taken of
// (a file an overlay did not write has its base's digest when its block
// map is the base's). Commit then does not read the file.
func (s *Selection) SetDigest(c Change, sum string) {
	if s.next == nil || sum == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sums == nil {
		s.sums = map[fileKey]string{}
	}
	s.sums[fileKey{c.Volume, c.Ino}] = sum
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
	// The due files without a verdict stay due for the next scan poll,
	// wherever the cursor goes.
	s.next.Unscanned = nil
	for _, c := range s.Due() {
		if s.scanned[fileKey{c.Volume, c.Ino}] {
			continue
		}
		if s.next.Unscanned == nil {
			s.next.Unscanned = map[string][]uint32{}
		}
		s.next.Unscanned[c.Volume] = append(s.next.Unscanned[c.Volume], c.Ino)
	}
	for _, inos := range s.next.Unscanned {
		slices.Sort(inos)
	}
	return s.store.Save(s.next)
}

// Select finds the files of d (the disk of im) changed since the last poll
// recorded in st, with the dirty source src. With an empty state it indexes
// everything and every regular file is due (the first poll is a full scan);
// when rulesDigest differs from the state's, every regular file is due too
// (a new rule must see old files), while the dirty mapping still updates
// the index. A Reference source (an older image) needs no state: st may be
// nil, and the selection keeps none.
func Select(ctx context.Context, im *disk.Image, d *fsparse.Disk, src Source, st Store, rulesDigest string) (*Selection, error) {
	if ref, ok := src.(Reference); ok {
		return compare(ctx, ref, d)
	}
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
	sel := &Selection{Source: src.String(), Disk: d, store: st, Stats: map[string]Stats{},
		next: &Snapshot{Identity: id, RulesDigest: rulesDigest, Cursor: Cursor{Source: src.String()}, Indexes: map[string]*Index{}}}
	var cursor *Cursor
	if prev != nil {
		cursor = &prev.Cursor
	}
	dirty, full, err := src.Since(ctx, cursor, &sel.next.Cursor)
	if err != nil {
		return nil, err
	}
	rulesChanged := prev != nil && prev.RulesDigest != rulesDigest
	for _, v := range d.Volumes {
		if _, err := OpenFS(v); err != nil { // why it is not mappable (e.g. the XFS inode that does not fit)
			sel.Errors = append(sel.Errors, fmt.Errorf("%s: %w", v.ID, err))
			continue
		}
		v, replayed := sel.recover(ctx, v)
		var x *Index
		if old := prevIndex(prev, v.ID); old != nil && !full {
			part := v.FromDisk(dirty)
			part.AddSet(replayed)
			res, err := Poll(ctx, v, old, part, withDeferredHashes())
			if err != nil {
				return nil, err
			}
			x = sel.addPoll(v, res, replayed)
		} else if x, err = sel.addFull(ctx, v); err != nil {
			return nil, err
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
		if prev != nil {
			sel.unscanned = append(sel.unscanned, stillUnscanned(x, prev.Unscanned[v.ID], sel.Changes)...)
		}
		if err := x.loadErr(); err != nil {
			return nil, fmt.Errorf("dirty: %s: poll state: %w", v.ID, err)
		}
	}
	SortChanges(sel.Changes)
	return sel, nil
}

// addPoll adds the poll res of volume v (replayed: the ranges its journal
// replay changed) to the selection and returns its new index.
func (s *Selection) addPoll(v *fsparse.Volume, res *Result, replayed rangeset.Set) *Index {
	s.unhashed = append(s.unhashed, unhashed{v, res.New, res.unhashed})
	if s.pending == nil {
		s.pending = map[fileKey]bool{}
	}
	for _, ino := range res.unhashed {
		s.pending[fileKey{v.ID, ino}] = true
	}
	s.Changes = append(s.Changes, res.Changes...)
	res.Stats.ReplayedBytes = replayed.Bytes()
	s.Stats[v.ID] = res.Stats
	s.Errors = append(s.Errors, res.Errors...)
	return res.New
}

// addFull indexes volume v whole and makes every regular file due (a
// first poll) and returns the index.
func (s *Selection) addFull(ctx context.Context, v *fsparse.Volume) (*Index, error) {
	x, err := BuildIndex(ctx, v)
	if err != nil {
		return nil, err
	}
	// Later polls compare a file whose data blocks are dirty with its
	// digest: every digest is recorded by Commit.
	s.unhashed = append(s.unhashed, unhashed{v, x, nil})
	s.Changes = append(s.Changes, everything(x, KindFull)...)
	return x, nil
}

// stillUnscanned returns, as due changes, the files of inos (changed since
// their last scan, by the last state) that are still regular files of x
// and that changes does not already make due.
func stillUnscanned(x *Index, inos []uint32, changes []Change) []Change {
	if len(inos) == 0 {
		return nil
	}
	due := map[uint32]bool{}
	for _, c := range changes {
		if c.Volume == x.Volume && c.Rescan {
			due[c.Ino] = true
		}
	}
	var out []Change
	for _, ino := range inos {
		r := x.get(ino)
		if due[ino] || r == nil || !r.IsRegular() {
			continue
		}
		due[ino] = true
		ps := x.Paths(ino)
		if len(ps) == 0 {
			continue
		}
		out = append(out, Change{Volume: x.Volume, Path: ps[0], Paths: ps, Ino: ino, Type: "file",
			Change: Modified, Reasons: []Kind{KindUnscanned}, Size: int64(r.Size), Rescan: true})
	}
	return out
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

// mappable reports whether the dirty mapping knows the filesystem of v.
func mappable(v *fsparse.Volume) bool {
	_, err := OpenFS(v)
	return err == nil
}

// Compare finds the files that differ between an older image old and a
// newer one cur of the same disk: Select with the Base source.
func Compare(ctx context.Context, old *disk.Image, oldDisk *fsparse.Disk, cur *disk.Image, curDisk *fsparse.Disk) (*Selection, error) {
	return Select(ctx, cur, curDisk, Base(old, oldDisk, cur), nil, "")
}

// compare polls every volume of curDisk against the index of the same
// volume in the older image of ref, with the older bytes as reference.
func compare(ctx context.Context, ref Reference, curDisk *fsparse.Disk) (*Selection, error) {
	dirty, _, err := ref.Since(ctx, nil, &Cursor{})
	if err != nil {
		return nil, err
	}
	oldDisk := ref.Older()
	sel := &Selection{Source: ref.String(), Disk: curDisk, Stats: map[string]Stats{}}
	for _, v := range curDisk.Volumes {
		if v.OnOtherDisks() {
			_, err := OpenFS(v)
			sel.Errors = append(sel.Errors, err)
			continue
		}
		if !mappable(v) {
			continue
		}
		ov, err := oldDisk.Volume(v.ID)
		if err != nil || !mappable(ov) || ov.UUID != v.UUID || !slices.Equal(ov.Segments, v.Segments) {
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
		part := v.FromDisk(dirty)
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
