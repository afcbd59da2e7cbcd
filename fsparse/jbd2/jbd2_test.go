package jbd2

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/internal/fixture"
)

// builder writes a journal in memory, block by block, with the 64bit and
// checksum v3 features (what mke2fs makes today) unless told otherwise.
type builder struct {
	bs       int
	incompat uint32
	blocks   [][]byte
	seed     uint32
	uuid     [16]byte
}

func newBuilder(bs int, incompat uint32, maxLen int) *builder {
	b := &builder{bs: bs, incompat: incompat, uuid: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}
	b.seed = crc32c(^uint32(0), b.uuid[:])
	b.blocks = make([][]byte, maxLen)
	for i := range b.blocks {
		b.blocks[i] = make([]byte, bs)
	}
	sb := b.blocks[0]
	be := binary.BigEndian
	be.PutUint32(sb[0:], magic)
	be.PutUint32(sb[4:], typeSuperV2)
	be.PutUint32(sb[0xC:], uint32(bs))
	be.PutUint32(sb[0x10:], uint32(maxLen))
	be.PutUint32(sb[0x14:], 1)
	be.PutUint32(sb[0x28:], incompat)
	copy(sb[0x30:], b.uuid[:])
	return b
}

func (b *builder) csum() bool { return b.incompat&(incompatCsumV2|incompatCsumV3) != 0 }

// start sets s_start and s_sequence.
func (b *builder) start(blk, seq uint32) {
	binary.BigEndian.PutUint32(b.blocks[0][0x18:], seq)
	binary.BigEndian.PutUint32(b.blocks[0][0x1C:], blk)
}

func (b *builder) header(blk int, typ, seq uint32) []byte {
	p := b.blocks[blk]
	clear(p)
	binary.BigEndian.PutUint32(p[0:], magic)
	binary.BigEndian.PutUint32(p[4:], typ)
	binary.BigEndian.PutUint32(p[8:], seq)
	return p
}

func (b *builder) seal(p []byte, at int) {
	if !b.csum() {
		return
	}
	binary.BigEndian.PutUint32(p[at:], 0)
	binary.BigEndian.PutUint32(p[at:], crc32c(b.seed, p))
}

// transaction writes a descriptor at blk for the fs blocks, then their
// data (the byte fill, or the jbd2 magic at the start for escaped ones),
// then a commit block when commit is set. It returns the next free block.
func (b *builder) transaction(blk int, seq uint32, fsBlocks []uint64, escaped map[uint64]bool, fill byte, commit bool) int {
	d := b.header(blk, typeDescriptor, seq)
	sb := Superblock{FeatureIncompat: b.incompat}
	tb := sb.tagBytes()
	off := 12
	for i, fb := range fsBlocks {
		data := b.blocks[blk+1+i]
		for k := range data {
			data[k] = fill + byte(i)
		}
		flags := uint32(0)
		if escaped[fb] {
			flags |= flagEscape // the block began with the magic; the log holds zeros there
			binary.BigEndian.PutUint32(data, 0)
		}
		if i > 0 {
			flags |= flagSameUUID
		}
		if i == len(fsBlocks)-1 {
			flags |= flagLastTag
		}
		var s [4]byte
		binary.BigEndian.PutUint32(s[:], seq)
		sum := crc32c(crc32c(b.seed, s[:]), data)
		be := binary.BigEndian
		be.PutUint32(d[off:], uint32(fb))
		if b.incompat&incompatCsumV3 != 0 {
			be.PutUint32(d[off+4:], flags)
			be.PutUint32(d[off+8:], uint32(fb>>32))
			be.PutUint32(d[off+12:], sum)
		} else {
			be.PutUint16(d[off+4:], uint16(sum))
			be.PutUint16(d[off+6:], uint16(flags))
			if b.incompat&incompat64bit != 0 {
				be.PutUint32(d[off+8:], uint32(fb>>32))
			}
		}
		off += tb
		if i == 0 {
			copy(d[off:], b.uuid[:])
			off += 16
		}
	}
	b.seal(d, b.bs-4)
	next := blk + 1 + len(fsBlocks)
	if commit {
		c := b.header(next, typeCommit, seq)
		b.seal(c, 16)
		next++
	}
	return next
}

func (b *builder) revoke(blk int, seq uint32, fsBlocks []uint64) int {
	p := b.header(blk, typeRevoke, seq)
	off := 16
	for _, fb := range fsBlocks {
		if b.incompat&incompat64bit != 0 {
			binary.BigEndian.PutUint64(p[off:], fb)
			off += 8
		} else {
			binary.BigEndian.PutUint32(p[off:], uint32(fb))
			off += 4
		}
	}
	binary.BigEndian.PutUint32(p[12:], uint32(off))
	b.seal(p, b.bs-4)
	return blk + 1
}

func (b *builder) bytes() []byte { return bytes.Join(b.blocks, nil) }

// replayBytes replays a journal held in j (journal block i at byte i×bs,
// the "filesystem" being the journal itself plus fsBlocks).
func replayBytes(ctx context.Context, j []byte, bs int64, fsBlocks uint64) (*Overlay, error) {
	n := uint64(len(j)) / uint64(bs)
	r, err := newReplayer(bytes.NewReader(j), bs, max(fsBlocks, n), []ext4.Extent{{Logical: 0, Physical: 0, Len: n}})
	if err != nil {
		return nil, err
	}
	return r.replay(ctx)
}

func TestReplaySynthetic(t *testing.T) {
	for _, feat := range []struct {
		name     string
		incompat uint32
	}{
		{"64bit+csum3", incompatRevoke | incompat64bit | incompatCsumV3},
		{"csum2", incompatRevoke | incompatCsumV2},
		{"plain", incompatRevoke},
	} {
		t.Run(feat.name, func(t *testing.T) {
			b := newBuilder(1024, feat.incompat, 64)
			b.start(5, 7)
			next := b.transaction(5, 7, []uint64{100, 200}, map[uint64]bool{200: true}, 0xA0, true)
			next = b.revoke(next, 8, []uint64{100})
			next = b.transaction(next, 8, []uint64{300, 200}, nil, 0xB0, true)
			// Transaction 9 has no commit block: the guest died while writing it.
			b.transaction(next, 9, []uint64{400}, nil, 0xC0, false)
			// A stale block of an old lap right after the start must not count.
			b.transaction(1, 3, []uint64{500}, nil, 0xD0, true)
			j := b.bytes()
			ov, err := replayBytes(context.Background(), j, 1024, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if ov.Transactions != 2 || ov.FirstSeq != 7 || ov.Revoked != 1 {
				t.Errorf("transactions %d from %d, revoked %d; want 2 from 7, 1", ov.Transactions, ov.FirstSeq, ov.Revoked)
			}
			if len(ov.Blocks) != 2 {
				t.Fatalf("overlay %v, want blocks 200 and 300", ov.Blocks)
			}
			dev := make([]byte, 1000*1024)
			copy(dev, j)
			r := ov.ReaderAt(bytes.NewReader(dev))
			got := make([]byte, 3*1024)
			if _, err := r.ReadAt(got, 199*1024); err != nil {
				t.Fatal(err)
			}
			// 199 is untouched (zero), 200 is transaction 8's second block, 201 zero.
			if !bytes.Equal(got[:1024], make([]byte, 1024)) || got[1024+5] != 0xB1 || !bytes.Equal(got[2048:], make([]byte, 1024)) {
				t.Errorf("read through the overlay around block 200: %x %x %x", got[:4], got[1024:1030], got[2048:2052])
			}
			p := make([]byte, 8)
			r.ReadAt(p, 300*1024+2)
			if p[0] != 0xB0 {
				t.Errorf("block 300: %x", p)
			}
			r.ReadAt(p, 100*1024)
			if !bytes.Equal(p, make([]byte, 8)) {
				t.Errorf("revoked block 100 replayed: %x", p)
			}

			// Escaped: transaction 7's copy of 200, with only transaction 7.
			b2 := newBuilder(1024, feat.incompat, 64)
			b2.start(5, 7)
			b2.transaction(5, 7, []uint64{200}, map[uint64]bool{200: true}, 0xA0, true)
			ov2, err := replayBytes(context.Background(), b2.bytes(), 1024, 1000)
			if err != nil {
				t.Fatal(err)
			}
			dev2 := make([]byte, 1000*1024)
			copy(dev2, b2.bytes())
			r2 := ov2.ReaderAt(bytes.NewReader(dev2))
			r2.ReadAt(p, 200*1024+2)
			if binary.BigEndian.Uint16(p) != magic&0xFFFF || p[2] != 0xA0 {
				t.Errorf("escaped block: %x", p)
			}

			if b.csum() {
				// A data block whose checksum does not match is not replayed.
				// Layout: 5 descriptor, 6-7 data, 8 commit (transaction 7);
				// 9 revoke, 10 descriptor, 11-12 data, 13 commit (8).
				bad := bytes.Clone(j)
				bad[11*1024+100] ^= 0xFF // transaction 8's copy of block 300
				ov3, err := replayBytes(context.Background(), bad, 1024, 1000)
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := ov3.Blocks[300]; ok || ov3.BadChecksums != 1 {
					t.Errorf("corrupt copy of block 300 replayed (bad checksums %d)", ov3.BadChecksums)
				}
			}
		})
	}
}

func TestReplayClean(t *testing.T) {
	b := newBuilder(1024, incompatRevoke, 16)
	ov, err := replayBytes(context.Background(), b.bytes(), 1024, 100)
	if err != nil || len(ov.Blocks) != 0 || ov.Transactions != 0 {
		t.Fatalf("clean journal: %+v %v", ov, err)
	}
}

func TestReplayBadSuper(t *testing.T) {
	for name, mut := range map[string]func(p []byte){
		"magic":     func(p []byte) { p[0] = 0 },
		"blocksize": func(p []byte) { binary.BigEndian.PutUint32(p[0xC:], 1000) },
		"maxlen":    func(p []byte) { binary.BigEndian.PutUint32(p[0x10:], 1<<30) },
		"start":     func(p []byte) { binary.BigEndian.PutUint32(p[0x1C:], 99) },
		"incompat":  func(p []byte) { binary.BigEndian.PutUint32(p[0x28:], 0x8000) },
	} {
		b := newBuilder(1024, incompatRevoke, 16)
		b.start(1, 1)
		mut(b.blocks[0])
		_, err := replayBytes(context.Background(), b.bytes(), 1024, 100)
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: %v, want ErrCorrupt or ErrUnsupported", name, err)
		}
	}
}

// fcJournal is a journal with one full commit (sequence 1) and a
// fast-commit length of two blocks (the area is the last block: it starts
// one block after the log's end) that holds recs (little-endian tag,
// length, value).
func fcJournal(recs ...[]byte) []byte {
	b := newBuilder(1024, incompatRevoke|incompat64bit|incompatCsumV3|incompatFastCmt, 24)
	binary.BigEndian.PutUint32(b.blocks[0][0x54:], 2)
	b.start(3, 1)
	b.transaction(3, 1, []uint64{50}, nil, 1, true)
	copy(b.blocks[23], bytes.Join(recs, nil))
	return b.bytes()
}

func fcRec(tag uint16, val ...uint32) []byte {
	r := binary.LittleEndian.AppendUint16(nil, tag)
	r = binary.LittleEndian.AppendUint16(r, uint16(4*len(val)))
	for _, v := range val {
		r = binary.LittleEndian.AppendUint32(r, v)
	}
	return r
}

// TestFastCommitSynthetic: complete fast commits of the transaction after
// the last full commit are counted with their inodes; an incomplete one
// (no tail), one of an older transaction, or an area without a head are
// not.
func TestFastCommitSynthetic(t *testing.T) {
	for _, c := range []struct {
		name   string
		j      []byte
		n      int
		inodes []uint32
	}{
		{"two complete, one open", fcJournal(fcRec(fcHead, 0, 2), fcRec(fcInode, 12, 0, 0), fcRec(fcAddRange, 12, 0, 0, 0), fcRec(fcTail, 2, 0),
			fcRec(fcCreat, 2, 14), fcRec(fcTail, 2, 0), fcRec(fcInode, 15, 0)), 2, []uint32{12, 14}},
		{"older transaction", fcJournal(fcRec(fcHead, 0, 1), fcRec(fcInode, 12, 0), fcRec(fcTail, 1, 0)), 0, nil},
		{"no head", fcJournal(fcRec(fcInode, 12, 0), fcRec(fcTail, 2, 0)), 0, nil},
		{"tail of another transaction", fcJournal(fcRec(fcHead, 0, 2), fcRec(fcInode, 12, 0), fcRec(fcTail, 3, 0)), 0, nil},
	} {
		ov, err := replayBytes(context.Background(), c.j, 1024, 128)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ov.Transactions != 1 || ov.FastCommits != c.n || !slices.Equal(ov.FastCommitInodes, c.inodes) {
			t.Errorf("%s: %d transactions, %d fast commits, inodes %v; want 1, %d, %v", c.name, ov.Transactions, ov.FastCommits, ov.FastCommitInodes, c.n, c.inodes)
		}
	}
}

// FuzzReplay: any journal bytes give an overlay or an error; the overlay
// only names blocks of the filesystem and journal blocks of the log.
func FuzzReplay(f *testing.F) {
	b := newBuilder(1024, incompatRevoke|incompat64bit|incompatCsumV3, 24)
	b.start(3, 1)
	n := b.transaction(3, 1, []uint64{50, 60}, map[uint64]bool{60: true}, 1, true)
	n = b.revoke(n, 2, []uint64{50})
	b.transaction(n, 2, []uint64{70}, nil, 2, true)
	f.Add(b.bytes())
	b2 := newBuilder(1024, incompatRevoke, 8)
	b2.start(1, 5)
	b2.transaction(1, 5, []uint64{9}, nil, 3, true)
	f.Add(b2.bytes())
	f.Add(fcJournal(fcRec(fcHead, 0, 2), fcRec(fcInode, 12, 0), fcRec(fcCreat, 2, 14), fcRec(fcTail, 2, 0)))
	f.Fuzz(func(t *testing.T, j []byte) {
		if len(j) > 1<<20 {
			return
		}
		const bs = 1024
		j = append(j, make([]byte, (bs-len(j)%bs)%bs)...)
		if len(j) < 2*bs {
			return
		}
		const fsBlocks = 4096
		ov, err := replayBytes(context.Background(), j, bs, fsBlocks)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error outside the categories: %v", err)
			}
			return
		}
		nj := uint64(len(j) / bs)
		if uint64(len(ov.Blocks)) > uint64(ov.Journal.MaxLen) {
			t.Fatalf("%d overlay blocks from a %d-block journal", len(ov.Blocks), ov.Journal.MaxLen)
		}
		for fb, src := range ov.Blocks {
			if fb >= max(fsBlocks, nj) || src.Block < uint64(ov.Journal.First) || src.Block >= uint64(ov.Journal.MaxLen) {
				t.Fatalf("overlay block %d from journal block %d (journal %+v)", fb, src.Block, ov.Journal)
			}
		}
	})
}

// view is the reference of a tree: per path, metadata and content digest.
func view(t *testing.T, f *ext4.FS, lenient bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := fs.WalkDir(f, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if lenient {
				out[p] = "error: " + err.Error()
				return nil
			}
			return err
		}
		fi, err := f.Lstat(p)
		if err != nil {
			return err
		}
		in := fi.Sys().(*ext4.Inode)
		s := fmt.Sprintf("ino=%d mode=%o uid=%d gid=%d size=%d links=%d mtime=%d ctime=%d atime=%d gen=%d",
			in.Ino, in.Mode, in.Uid, in.Gid, in.Size, in.Links, in.Mtime.UnixNano(), in.Ctime.UnixNano(), in.Atime.UnixNano(), in.Generation)
		switch {
		case in.IsRegular():
			fl, err := f.OpenInode(in.Ino)
			if err != nil {
				return err
			}
			h := sha256.New()
			if _, err := io.Copy(h, io.NewSectionReader(fl, 0, fl.Size())); err != nil {
				return err
			}
			s += " sha256=" + hex.EncodeToString(h.Sum(nil))
		case in.IsSymlink():
			target, err := f.ReadlinkInode(in.Ino)
			if err != nil {
				return err
			}
			s += " target=" + target
		}
		out[p] = s
		return nil
	})
	if lenient {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func openFS(t *testing.T, r io.ReaderAt, size int64) *ext4.FS {
	t.Helper()
	f, err := ext4.Open(r, size)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// crashedGuest opens PREFIXcrash.img of testdata/guest-disk (its journal
// needs recovery) and its filesystem; the fixture folder holds the
// reference ref too.
func crashedGuest(t *testing.T, prefix, ref string) (dir string, img *os.File, raw *ext4.FS) {
	t.Helper()
	dir = filepath.Join(fixture.Root(), "testdata", "out-guest-disk")
	crash := filepath.Join(dir, prefix+"crash.img")
	for _, p := range []string{crash, filepath.Join(dir, ref)} {
		if _, err := os.Stat(p); err != nil {
			fixture.Missing(t, "%s (bash testdata/guest-disk/build.sh)", p)
		}
	}
	img, err := os.Open(crash)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	st, _ := img.Stat()
	raw = openFS(t, img, st.Size())
	if !NeedsRecovery(raw.Super()) {
		t.Fatalf("%s does not need recovery", crash)
	}
	return dir, img, raw
}

// TestReplayCrashedGuest: the guest of testdata/guest-disk wrote with
// commit=1 and was killed; the in-memory replay must give the tree that
// e2fsck's recovery gives (crash-fsck.img), and the image must not be
// that tree without it.
func TestReplayCrashedGuest(t *testing.T) {
	dir, img, raw := crashedGuest(t, "", "crash-fsck.img")
	st, _ := img.Stat()
	before := sha256.New()
	io.Copy(before, img)
	ov, err := Replay(context.Background(), raw, img)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("journal %+v: %d transactions from %d, %d blocks, %d revoked, %d bad checksums",
		ov.Journal, ov.Transactions, ov.FirstSeq, len(ov.Blocks), ov.Revoked, ov.BadChecksums)
	if ov.Transactions == 0 || len(ov.Blocks) == 0 || ov.BadChecksums != 0 {
		t.Fatalf("replay: %d transactions, %d blocks, %d bad checksums", ov.Transactions, len(ov.Blocks), ov.BadChecksums)
	}
	replayed := openFS(t, ov.ReaderAt(img), st.Size())
	fsckImg, err := os.Open(filepath.Join(dir, "crash-fsck.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer fsckImg.Close()
	want := view(t, openFS(t, fsckImg, st.Size()), false)
	got := view(t, replayed, false)
	diff := func(a, b map[string]string) (n int) {
		for p, x := range a {
			if b[p] != x {
				n++
				if n <= 10 {
					t.Logf("  %s:\n    %q\n    %q", p, x, b[p])
				}
			}
		}
		for p := range b {
			if _, ok := a[p]; !ok {
				n++
				if n <= 10 {
					t.Logf("  %s: only in the second", p)
				}
			}
		}
		return n
	}
	if n := diff(want, got); n != 0 {
		t.Errorf("replayed view differs from e2fsck's recovery in %d paths", n)
	}
	// Without the replay the on-disk state is older (and may be
	// inconsistent): it must differ, or the fixture tests nothing.
	unreplayed := view(t, raw, true)
	n := diff(want, unreplayed)
	if n == 0 {
		t.Error("the image reads the same without the replay: the fixture does not test it")
	}
	t.Logf("%d paths after recovery; without the replay %d paths differ", len(want), n)
	if ov.FastCommits != 0 {
		t.Errorf("a journal without fast_commit: %d fast commits", ov.FastCommits)
	}
	img.Seek(0, io.SeekStart)
	after := sha256.New()
	io.Copy(after, img)
	if !bytes.Equal(before.Sum(nil), after.Sum(nil)) {
		t.Error("crash.img changed")
	}
}

// TestFastCommitCrashedGuest: the guest of testdata/guest-disk wrote and
// fsync'ed on a filesystem with fast_commit (no full commit after), then
// was killed. The fast commits must be found, with the inodes they log:
// the inodes of the new and the appended file, as debugfs names them in
// the guest kernel's own recovery of the image (it replays fast commits).
func TestFastCommitCrashedGuest(t *testing.T) {
	dir, img, raw := crashedGuest(t, "fc-", "fc-crash-recovered.img")
	ref := filepath.Join(dir, "fc-crash-recovered.img")
	ov, err := Replay(context.Background(), raw, img)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("journal: %d transactions from %d; %d fast commits, inodes %v; notes %q",
		ov.Transactions, ov.FirstSeq, ov.FastCommits, ov.FastCommitInodes, ov.Notes)
	if ov.FastCommits == 0 || len(ov.Notes) == 0 {
		t.Fatal("no fast commit found")
	}
	// The reference: the fast-commit area as e2fsprogs' logdump reads it.
	out, err := exec.Command(fixture.Tool(t, "debugfs"), "-R", "logdump", filepath.Join(dir, "fc-crash.img")).Output()
	if err != nil {
		t.Fatalf("debugfs logdump: %v", err)
	}
	_, area, ok := strings.Cut(string(out), "*** Fast Commit Area ***")
	if !ok {
		t.Fatalf("debugfs logdump shows no fast-commit area:\n%s", out)
	}
	var want []uint32
	for _, m := range regexp.MustCompile(`\bino(?:de)? (\d+)`).FindAllStringSubmatch(area, -1) {
		ino, _ := strconv.ParseUint(m[1], 10, 32)
		if !slices.Contains(want, uint32(ino)) {
			want = append(want, uint32(ino))
		}
	}
	slices.Sort(want)
	if !slices.Equal(ov.FastCommitInodes, want) {
		t.Errorf("fast commits' inodes %v, debugfs logdump %v:%s", ov.FastCommitInodes, want, area)
	}
	// The guest fsync'ed an append to /data/append.log after the last full
	// commit: its inode (in the kernel's recovery) is logged there.
	out, err = exec.Command(fixture.Tool(t, "debugfs"), "-R", "stat /data/append.log", ref).Output()
	m := regexp.MustCompile(`Inode: (\d+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("debugfs stat: %v: %s", err, out)
	}
	if ino, _ := strconv.ParseUint(string(m[1]), 10, 32); !slices.Contains(ov.FastCommitInodes, uint32(ino)) {
		t.Errorf("/data/append.log (inode %d) is not among the fast commits' inodes %v", ino, ov.FastCommitInodes)
	}
}
