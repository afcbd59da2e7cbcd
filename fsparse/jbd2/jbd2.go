// Package jbd2 replays the journal of an ext3/ext4 filesystem in memory.
//
// An image taken from a running guest is crash-consistent: transactions the
// guest committed to its journal may not have reached their home blocks
// yet. [Replay] reads the journal through the fsparse/ext4 API, finds the
// committed transactions from the journal superblock's s_start and
// s_sequence on, and returns an [Overlay]: for every filesystem block a
// committed transaction logged (and no later revoke record cancelled), where
// its latest version lies in the journal. [Overlay.ReaderAt] turns it into
// the device as the kernel (or e2fsck) would leave it after recovery.
//
// What it promises:
//   - Read-only: the image is never written; the overlay only points at
//     journal blocks, so memory is bounded by the journal's length, not by
//     what it logs.
//   - Bounded: every count and offset read from the journal is checked
//     against the journal's length and the block size before it is used;
//     the walk stops after one lap of the log.
//   - Recovery semantics of the kernel's fs/jbd2/recovery.c: a transaction
//     counts only when its commit block is found with the expected
//     sequence; revoke records of committed transactions cancel the copies
//     of their block logged in transactions up to theirs; escaped blocks get
//     their magic number back; with the checksum v2/v3 features a descriptor,
//     revoke or commit block with a bad checksum ends the log, and a data
//     block whose tag checksum does not match is not replayed.
//   - Internal journal (the journal inode) only: an external journal device
//     is an error (ErrUnsupported).
//   - Fast commits (ext4 fast_commit) are found as ext4's replay scan finds
//     them (a head of the transaction after the last full commit, complete
//     up to a tail of that transaction) and reported with the inodes they
//     log (Overlay.FastCommits), not replayed: replaying them rebuilds
//     extent trees, bitmaps and directories.
package jbd2

import (
	"context"
	"encoding/binary"
	"fmt"
	"github.com/vmscope/vmscope/vmerr"
	"hash/crc32"
	"io"
	"slices"

	"github.com/vmscope/vmscope/fsparse/ext4"
)

// Errors by category.
var (
	// ErrCorrupt: a journal structure is out of bounds or inconsistent.
	ErrCorrupt = vmerr.New("jbd2: corrupt journal", vmerr.ErrCorrupt)
	// ErrUnsupported: a journal this package does not replay (external
	// device, unknown incompatible features).
	ErrUnsupported = vmerr.New("jbd2: unsupported journal", vmerr.ErrUnsupported)
)

const (
	magic = 0xC03B3998

	typeDescriptor = 1
	typeCommit     = 2
	typeSuperV1    = 3
	typeSuperV2    = 4
	typeRevoke     = 5

	// superblock feature bits
	compatChecksum    = 0x1
	incompatRevoke    = 0x1
	incompat64bit     = 0x2
	incompatAsync     = 0x4
	incompatCsumV2    = 0x8
	incompatCsumV3    = 0x10
	incompatFastCmt   = 0x20
	incompatSupported = incompatRevoke | incompat64bit | incompatAsync | incompatCsumV2 | incompatCsumV3 | incompatFastCmt

	// tag flags
	flagEscape   = 1
	flagSameUUID = 2
	flagLastTag  = 8

	// ext4 superblock bits
	extCompatHasJournal  = 0x4
	extIncompatRecover   = 0x4
	extIncompatJournalDv = 0x8

	maxJournalBlocks = 1 << 26 // 256 GiB of journal at 4 KiB: far beyond mke2fs's 1 GiB
)

// NeedsRecovery reports whether the filesystem's superblock says its
// journal holds transactions not yet checkpointed (the needs_recovery
// feature, set while mounted and after a crash).
func NeedsRecovery(sb *ext4.Superblock) bool {
	return sb.FeatureCompat&extCompatHasJournal != 0 && sb.FeatureIncompat&extIncompatRecover != 0
}

// Superblock is the decoded journal superblock.
type Superblock struct {
	BlockSize       int
	MaxLen          uint32 // journal length in blocks
	First           uint32 // first block of the log
	Sequence        uint32 // first transaction expected in the log
	Start           uint32 // first block of the log to replay; 0: the journal is clean
	Version         int    // 1 or 2
	FeatureCompat   uint32
	FeatureIncompat uint32
	UUID            [16]byte
	NumFCBlocks     uint32 // fast-commit area at the end of the journal
}

// Source is where the replayed version of one filesystem block lies: a
// journal block (by its filesystem block number), with its first four
// bytes to be restored to the jbd2 magic when it was escaped.
type Source struct {
	Block   uint64
	Escaped bool
}

// Overlay is the outcome of a replay.
type Overlay struct {
	BlockSize int64
	Blocks    map[uint64]Source // filesystem block → its latest committed version
	Journal   Superblock
	// Transactions replayed: sequences [FirstSeq, FirstSeq+Transactions).
	FirstSeq     uint32
	Transactions int
	Revoked      int // logged copies cancelled by revoke records
	BadChecksums int // data blocks not replayed for a bad tag checksum
	// Notes are what the replay could not do and why (fast-commit blocks).
	Notes []string
	// FastCommits counts the complete fast commits in the fast-commit area
	// that belong to the transaction after the last full commit: journal
	// recovery would replay them, this package does not (FastCommitInodes
	// are the inodes they log).
	FastCommits      int
	FastCommitInodes []uint32
}

// jmap maps journal block numbers to filesystem blocks through the journal
// inode's extents.
type jmap struct {
	ext []ext4.Extent
	n   uint64
}

func (m *jmap) phys(lb uint64) (uint64, bool) {
	lo, hi := 0, len(m.ext)
	for lo < hi {
		mid := (lo + hi) / 2
		e := m.ext[mid]
		switch {
		case lb < e.Logical:
			hi = mid
		case lb >= e.Logical+e.Len:
			lo = mid + 1
		default:
			return e.Physical + lb - e.Logical, true
		}
	}
	return 0, false
}

type replayer struct {
	dev  io.ReaderAt
	bs   int64
	fsN  uint64 // filesystem blocks
	jm   jmap
	sb   Superblock
	seed uint32 // crc32c of the journal UUID (checksum v2/v3)
	buf  []byte
}

// read reads journal block lb.
func (r *replayer) read(lb uint64, p []byte) error {
	pb, ok := r.jm.phys(lb)
	if !ok {
		return fmt.Errorf("jbd2: journal block %d is not mapped by the journal inode: %w", lb, ErrCorrupt)
	}
	if pb >= r.fsN {
		return fmt.Errorf("jbd2: journal block %d at fs block %d beyond the filesystem: %w", lb, pb, ErrCorrupt)
	}
	n, err := r.dev.ReadAt(p, int64(pb)*r.bs)
	if n < len(p) {
		return fmt.Errorf("jbd2: reading journal block %d (fs block %d): %v: %w", lb, pb, err, ErrCorrupt)
	}
	return nil
}

// Open reads the journal superblock of f (whose device is dev).
func open(f *ext4.FS, dev io.ReaderAt) (*replayer, error) {
	sb := f.Super()
	if sb.FeatureCompat&extCompatHasJournal == 0 {
		return nil, fmt.Errorf("jbd2: the filesystem has no journal: %w", ErrUnsupported)
	}
	if sb.JournalInum == 0 || sb.FeatureIncompat&extIncompatJournalDv != 0 {
		return nil, fmt.Errorf("jbd2: external journal device (UUID %x): %w", sb.JournalUUID, ErrUnsupported)
	}
	ext, err := f.Extents(sb.JournalInum)
	if err != nil {
		return nil, fmt.Errorf("jbd2: journal inode %d: %w", sb.JournalInum, err)
	}
	return newReplayer(dev, int64(sb.BlockSize), sb.BlocksCount, ext)
}

// newReplayer reads the journal superblock from journal block 0 of the
// journal whose blocks ext maps into dev.
func newReplayer(dev io.ReaderAt, bs int64, fsBlocks uint64, ext []ext4.Extent) (*replayer, error) {
	r := &replayer{dev: dev, bs: bs, fsN: fsBlocks, jm: jmap{ext: ext}}
	for _, e := range ext {
		r.jm.n = max(r.jm.n, e.Logical+e.Len)
	}
	r.buf = make([]byte, r.bs)
	var err error
	if err := r.read(0, r.buf); err != nil {
		return nil, fmt.Errorf("jbd2: superblock: %w", err)
	}
	if r.sb, err = parseSuper(r.buf); err != nil {
		return nil, err
	}
	if int64(r.sb.BlockSize) != r.bs {
		return nil, fmt.Errorf("jbd2: superblock: journal block size %d, filesystem %d: %w", r.sb.BlockSize, r.bs, ErrUnsupported)
	}
	if uint64(r.sb.MaxLen) > r.jm.n {
		return nil, fmt.Errorf("jbd2: superblock: %d blocks, the journal inode maps %d: %w", r.sb.MaxLen, r.jm.n, ErrCorrupt)
	}
	if r.sb.csum() {
		r.seed = crc32c(^uint32(0), r.sb.UUID[:])
	}
	return r, nil
}

// parseSuper decodes a journal superblock (the first 1024 bytes of journal
// block 0 at least).
func parseSuper(b []byte) (Superblock, error) {
	var s Superblock
	if len(b) < 1024 {
		return s, fmt.Errorf("jbd2: superblock: %d bytes: %w", len(b), ErrCorrupt)
	}
	be := binary.BigEndian
	if be.Uint32(b[0:]) != magic {
		return s, fmt.Errorf("jbd2: superblock: bad magic %#x: %w", be.Uint32(b[0:]), ErrCorrupt)
	}
	switch be.Uint32(b[4:]) {
	case typeSuperV1:
		s.Version = 1
	case typeSuperV2:
		s.Version = 2
	default:
		return s, fmt.Errorf("jbd2: superblock: block type %d: %w", be.Uint32(b[4:]), ErrCorrupt)
	}
	s.BlockSize = int(be.Uint32(b[0xC:]))
	s.MaxLen = be.Uint32(b[0x10:])
	s.First = be.Uint32(b[0x14:])
	s.Sequence = be.Uint32(b[0x18:])
	s.Start = be.Uint32(b[0x1C:])
	if s.Version == 2 {
		s.FeatureCompat = be.Uint32(b[0x24:])
		s.FeatureIncompat = be.Uint32(b[0x28:])
		copy(s.UUID[:], b[0x30:0x40])
		if s.FeatureIncompat&incompatFastCmt != 0 {
			s.NumFCBlocks = be.Uint32(b[0x54:])
			if s.NumFCBlocks == 0 {
				s.NumFCBlocks = 256 // JBD2_DEFAULT_FAST_COMMIT_BLOCKS
			}
		}
	}
	switch {
	case s.BlockSize < 1024 || s.BlockSize > 65536 || s.BlockSize&(s.BlockSize-1) != 0:
		return s, fmt.Errorf("jbd2: superblock: block size %d: %w", s.BlockSize, ErrCorrupt)
	case s.MaxLen > maxJournalBlocks:
		return s, fmt.Errorf("jbd2: superblock: %d blocks: %w", s.MaxLen, ErrCorrupt)
	case s.First == 0 || uint64(s.First)+uint64(s.NumFCBlocks) >= uint64(s.MaxLen):
		return s, fmt.Errorf("jbd2: superblock: log from block %d in %d blocks (%d fast-commit): %w", s.First, s.MaxLen, s.NumFCBlocks, ErrCorrupt)
	case s.Start != 0 && (s.Start < s.First || s.Start >= s.MaxLen-s.NumFCBlocks):
		return s, fmt.Errorf("jbd2: superblock: log start %d outside [%d, %d): %w", s.Start, s.First, s.MaxLen-s.NumFCBlocks, ErrCorrupt)
	case s.FeatureIncompat&^incompatSupported != 0:
		return s, fmt.Errorf("jbd2: superblock: incompatible features %#x: %w", s.FeatureIncompat&^incompatSupported, ErrUnsupported)
	case s.FeatureIncompat&incompatCsumV2 != 0 && s.FeatureIncompat&incompatCsumV3 != 0:
		return s, fmt.Errorf("jbd2: superblock: both checksum v2 and v3: %w", ErrCorrupt)
	}
	return s, nil
}

func (s Superblock) csum() bool { return s.FeatureIncompat&(incompatCsumV2|incompatCsumV3) != 0 }
func (s Superblock) is64() bool { return s.FeatureIncompat&incompat64bit != 0 }

// tagBytes is the size of one descriptor tag (fs/jbd2/journal.c
// journal_tag_bytes), without the UUID that may follow.
func (s Superblock) tagBytes() int {
	if s.FeatureIncompat&incompatCsumV3 != 0 {
		return 16
	}
	n := 12
	if s.FeatureIncompat&incompatCsumV2 != 0 {
		n += 2
	}
	if !s.is64() {
		n -= 4
	}
	return n
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the kernel's crc32c(seed, p): no pre- or post-inversion.
func crc32c(seed uint32, p []byte) uint32 { return ^crc32.Update(^seed, castagnoli, p) }

// blockCsumOK checks the checksum of a descriptor or revoke block (its
// tail) or of a commit block (h_chksum[0] at byte 16).
func (r *replayer) blockCsumOK(b []byte, at int) bool {
	if !r.sb.csum() {
		return true
	}
	want := binary.BigEndian.Uint32(b[at:])
	c := crc32c(r.seed, b[:at])
	c = crc32c(c, []byte{0, 0, 0, 0})
	c = crc32c(c, b[at+4:])
	return c == want
}

// dataCsumOK checks a logged block against its tag's checksum.
func (r *replayer) dataCsumOK(seq uint32, data []byte, tagSum uint32) bool {
	if !r.sb.csum() {
		return true
	}
	var s [4]byte
	binary.BigEndian.PutUint32(s[:], seq)
	c := crc32c(crc32c(r.seed, s[:]), data)
	if r.sb.FeatureIncompat&incompatCsumV3 != 0 {
		return c == tagSum
	}
	return c&0xFFFF == tagSum&0xFFFF
}

type tag struct {
	fsBlock uint64
	jBlock  uint64 // journal block holding the copy
	flags   uint32
	sum     uint32
}

// Replay reads the journal of the ext3/ext4 filesystem f, whose device is
// dev, and returns the committed transactions it holds as an overlay. A
// clean journal (s_start 0) gives an empty overlay.
func Replay(ctx context.Context, f *ext4.FS, dev io.ReaderAt) (*Overlay, error) {
	r, err := open(f, dev)
	if err != nil {
		return nil, err
	}
	return r.replay(ctx)
}

// logged is a tag of a committed transaction.
type logged struct {
	tag
	seq uint32
}

// logWalk is the state of one pass over the log: the circular log's
// bounds, the transaction being read, and what committed transactions
// left (their tags in order, and the latest revoking sequence of each
// revoked fs block).
type logWalk struct {
	r             *replayer
	first, end    uint64 // the log's blocks: [first, end)
	limit         uint64 // one lap of the log
	steps         uint64
	seq           uint32 // the transaction being read
	blk           uint64 // the journal block being read
	pending       []tag
	pendingRevoke map[uint64]bool
	done          []logged
	revoked       map[uint64]uint32
	transactions  int
}

// replay runs recovery's passes: it walks the log (scan), then lays the
// committed, unrevoked, checksum-valid blocks into an overlay (apply), with
// the fast commits found after the last full commit.
func (r *replayer) replay(ctx context.Context) (*Overlay, error) {
	ov := &Overlay{BlockSize: r.bs, Blocks: map[uint64]Source{}, Journal: r.sb, FirstSeq: r.sb.Sequence}
	if r.sb.Start == 0 {
		return ov, nil
	}
	w, err := r.scan(ctx)
	if err != nil {
		return nil, err
	}
	ov.Transactions = w.transactions
	if r.sb.NumFCBlocks != 0 {
		if err := r.fastCommits(ctx, ov, w.seq); err != nil {
			return nil, err
		}
	}
	if err := r.apply(ctx, ov, w); err != nil {
		return nil, err
	}
	return ov, nil
}

// scan walks the log from s_start until a block that is not the next one
// of the sequence (the end of the log) or a bad block checksum, at most one
// lap of the log.
func (r *replayer) scan(ctx context.Context) (*logWalk, error) {
	w := &logWalk{r: r, first: uint64(r.sb.First), end: uint64(r.sb.MaxLen - r.sb.NumFCBlocks),
		seq: r.sb.Sequence, blk: uint64(r.sb.Start), pendingRevoke: map[uint64]bool{}, revoked: map[uint64]uint32{}}
	w.limit = w.end - w.first
	tail := 0
	if r.sb.csum() {
		tail = 4
	}
	b := r.buf
	be := binary.BigEndian
	for w.steps < w.limit {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := r.read(w.blk, b); err != nil {
			return nil, err
		}
		if be.Uint32(b[0:]) != magic || be.Uint32(b[8:]) != w.seq {
			return w, nil // the end of the log
		}
		w.steps++
		switch be.Uint32(b[4:]) {
		case typeDescriptor:
			if !r.blockCsumOK(b, len(b)-tail) {
				return w, nil
			}
			if err := w.descriptor(b, tail); err != nil {
				return nil, err
			}
		case typeRevoke:
			if !r.blockCsumOK(b, len(b)-tail) {
				return w, nil
			}
			if err := w.revoke(b, tail); err != nil {
				return nil, err
			}
		case typeCommit:
			if !r.blockCsumOK(b, 16) {
				return w, nil
			}
			w.commit()
		default:
			return nil, fmt.Errorf("jbd2: journal block %d of transaction %d: block type %d: %w", w.blk, w.seq, be.Uint32(b[4:]), ErrCorrupt)
		}
		w.blk = w.next(w.blk)
	}
	return w, nil
}

// next is the journal block after b, wrapping at the end of the log.
func (w *logWalk) next(b uint64) uint64 {
	if b++; b >= w.end {
		return w.first
	}
	return b
}

// descriptor reads the tags of a descriptor block b; the logged copies
// follow it, one journal block each.
func (w *logWalk) descriptor(b []byte, tail int) error {
	sb := w.r.sb
	be := binary.BigEndian
	tb := sb.tagBytes()
	var tags []tag
	off := 12
	for off+tb <= len(b)-tail {
		var t tag
		t.fsBlock = uint64(be.Uint32(b[off:]))
		if sb.FeatureIncompat&incompatCsumV3 != 0 {
			t.flags = be.Uint32(b[off+4:])
			if sb.is64() {
				t.fsBlock |= uint64(be.Uint32(b[off+8:])) << 32
			}
			t.sum = be.Uint32(b[off+12:])
		} else {
			t.sum = uint32(be.Uint16(b[off+4:]))
			t.flags = uint32(be.Uint16(b[off+6:]))
			if sb.is64() {
				t.fsBlock |= uint64(be.Uint32(b[off+8:])) << 32
			}
		}
		off += tb
		if t.flags&flagSameUUID == 0 {
			off += 16
		}
		tags = append(tags, t)
		if t.flags&flagLastTag != 0 || len(tags) > int(w.limit) {
			break
		}
	}
	for i := range tags {
		w.blk = w.next(w.blk)
		w.steps++
		if w.steps > w.limit {
			return fmt.Errorf("jbd2: transaction %d: descriptor tags run past one lap of the log: %w", w.seq, ErrCorrupt)
		}
		tags[i].jBlock = w.blk
	}
	w.pending = append(w.pending, tags...)
	return nil
}

// revoke reads a revoke block b: the fs blocks whose earlier copies must
// not be replayed.
func (w *logWalk) revoke(b []byte, tail int) error {
	be := binary.BigEndian
	n := int(be.Uint32(b[12:]))
	if n < 16 || n > len(b)-tail {
		return fmt.Errorf("jbd2: revoke block of transaction %d at journal block %d: r_count %d: %w", w.seq, w.blk, n, ErrCorrupt)
	}
	rs := 4
	if w.r.sb.is64() {
		rs = 8
	}
	for off := 16; off+rs <= n; off += rs {
		if rs == 8 {
			w.pendingRevoke[be.Uint64(b[off:])] = true
		} else {
			w.pendingRevoke[uint64(be.Uint32(b[off:]))] = true
		}
	}
	return nil
}

// commit closes the transaction being read: its tags and revokes count.
func (w *logWalk) commit() {
	for _, t := range w.pending {
		w.done = append(w.done, logged{t, w.seq})
	}
	for fb := range w.pendingRevoke {
		w.revoked[fb] = w.seq // sequences increase along the walk
	}
	w.pending = w.pending[:0]
	clear(w.pendingRevoke)
	w.transactions++
	w.seq++
}

// apply lays the committed copies into the overlay, in log order (a later
// copy of a block wins), skipping revoked copies and, with checksums, those
// whose tag checksum fails.
func (r *replayer) apply(ctx context.Context, ov *Overlay, w *logWalk) error {
	data := make([]byte, r.bs)
	for _, l := range w.done {
		if err := ctx.Err(); err != nil {
			return err
		}
		if rs, ok := w.revoked[l.fsBlock]; ok && int32(l.seq-rs) <= 0 {
			ov.Revoked++
			continue
		}
		if l.fsBlock >= r.fsN {
			return fmt.Errorf("jbd2: transaction %d logs fs block %d beyond %d blocks: %w", l.seq, l.fsBlock, r.fsN, ErrCorrupt)
		}
		pb, _ := r.jm.phys(l.jBlock)
		if r.sb.csum() {
			// The tag's checksum covers the block as logged (escaped).
			if err := r.read(l.jBlock, data); err != nil {
				return err
			}
			if !r.dataCsumOK(l.seq, data, l.sum) {
				ov.BadChecksums++
				continue
			}
		}
		ov.Blocks[l.fsBlock] = Source{Block: pb, Escaped: l.flags&flagEscape != 0}
	}
	return nil
}

// ReaderAt returns dev with the overlay's blocks in place of their home
// versions: the device as journal recovery would leave it.
func (o *Overlay) ReaderAt(dev io.ReaderAt) io.ReaderAt {
	if len(o.Blocks) == 0 {
		return dev
	}
	return &overlayReader{o: o, dev: dev}
}

type overlayReader struct {
	o   *Overlay
	dev io.ReaderAt
}

func (r *overlayReader) ReadAt(p []byte, off int64) (int, error) {
	bs := r.o.BlockSize
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		blk := pos / bs
		in := pos - blk*bs
		// Extend over blocks that come from the same place.
		n := int(min(int64(len(p)-done), bs-in))
		src, hit := r.o.Blocks[uint64(blk)]
		if !hit {
			for done+n < len(p) {
				if _, h := r.o.Blocks[uint64(blk)+uint64(n+int(in))/uint64(bs)]; h {
					break
				}
				n += int(min(int64(len(p)-done-n), bs))
			}
			k, err := r.dev.ReadAt(p[done:done+n], pos)
			done += k
			if err != nil {
				return done, err
			}
			continue
		}
		k, err := r.dev.ReadAt(p[done:done+n], int64(src.Block)*bs+in)
		if k < n {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return done + k, err
		}
		if src.Escaped && in < 4 {
			var m [4]byte
			binary.BigEndian.PutUint32(m[:], magic)
			copy(p[done:done+n], m[in:])
		}
		done += n
	}
	return done, nil
}

// Fast-commit tags (ext4's fs/ext4/fast_commit.h): little-endian
// tag-length-value records that never cross a block.
const (
	fcAddRange = 1
	fcDelRange = 2
	fcCreat    = 3
	fcLink     = 4
	fcUnlink   = 5
	fcInode    = 6
	fcPad      = 7
	fcTail     = 8
	fcHead     = 9
)

// fastCommits reads the fast-commit area (the end of the journal) as
// ext4's replay scan does: it holds fast commits of
// transaction tid (the one after the last full commit) when it starts with
// a head of that tid; each fast commit ends with a tail of that tid. The
// complete ones are counted, with the inodes they log; they are not
// replayed (that rebuilds extent trees, bitmaps and directories).
func (r *replayer) fastCommits(ctx context.Context, ov *Overlay, tid uint32) error {
	b := r.buf
	le := binary.LittleEndian
	var inodes, complete []uint32
	seen := map[uint32]bool{}
	// As jbd2 lays it out: the log ends at s_maxlen - num_fc_blocks
	// (exclusive), the fast-commit area runs from the block after that
	// one to s_maxlen.
	start := uint64(r.sb.MaxLen-r.sb.NumFCBlocks) + 1
scan:
	for i := uint64(0); start+i < uint64(r.sb.MaxLen); i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := r.read(start+i, b); err != nil {
			return err
		}
		for off := 0; off+4 <= len(b); {
			tag, n := le.Uint16(b[off:]), int(le.Uint16(b[off+2:]))
			val := b[off+4:]
			if n > len(val) {
				break scan // a record past its block: the end of what was written
			}
			val = val[:n]
			off += 4 + n
			switch {
			case i == 0 && off == 4+n && tag != fcHead:
				break scan // no head: the area holds nothing to replay
			case tag == fcHead:
				if n < 8 || le.Uint32(val[4:]) != tid {
					break scan // an older transaction's fast commits
				}
			case tag == fcTail:
				if n < 8 || le.Uint32(val) != tid {
					break scan
				}
				ov.FastCommits++
				complete = append(complete[:0], inodes...)
			case tag == fcPad:
				off = len(b)
			case tag >= fcAddRange && tag <= fcInode:
				if n < 4 {
					break scan
				}
				ino := le.Uint32(val)
				if tag >= fcCreat && tag <= fcUnlink {
					if n < 8 {
						break scan
					}
					ino = le.Uint32(val[4:]) // after the parent's
				}
				if !seen[ino] {
					seen[ino] = true
					inodes = append(inodes, ino)
				}
			default:
				break scan
			}
		}
	}
	if ov.FastCommits > 0 {
		slices.Sort(complete)
		ov.FastCommitInodes = complete
		ov.Notes = append(ov.Notes, fmt.Sprintf("%d fast commits of transaction %d (inodes %v) are not replayed", ov.FastCommits, tid, complete))
	}
	return nil
}
