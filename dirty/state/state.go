// Package state keeps vmscope's poll state in a bbolt file: per image, the
// file index (inode, paths, size, times, extents digest, content sha256,
// last verdict), the block → inode index (the runs of each file), the
// dirty-source cursor (source, chunk hashes) and the digest of the rules.
//
// Why bbolt: one pure-Go file with ACID transactions and no cgo (the
// scanner already links libyara; a second C library and its build flags
// are not worth it for a key/value state). A poll is saved in ONE
// transaction after it succeeds, so a poll that dies changes nothing and
// the next one redoes it; a missing or empty (0-byte) file becomes a
// database only at that save (written beside it, then put in its place), so
// a poll that fails leaves the file byte for byte as it was. One poll at a
// time: an open holds the file's lock until Close, and a second open waits
// for it, then fails with ErrBusy. A state file holds one image: opening it
// for another image is refused (dirty.ErrOtherImage).
//
// The scan side is kept apart from the cursor: bucket unscanned holds the
// files a poll that scanned nothing (vmscope dirty) found changed, due for
// the next scan whatever the cursor says.
//
// Layout (schema vmscope-state-4: file modes as io/fs modes), in bucket
// "vmscope":
//
//	schema, meta (JSON: identity, rules digest, source, chunk, the
//	overlay or bitmaps of the cursor), hashes (the chunk hashes of the
//	hash source)
//	unscanned/ volume ID + 0 + ino (4, BE) → empty: the regular files
//	        whose content changed since they were last scanned (a poll
//	        that scanned nothing found them); apart from the cursor
//	blocks/ group (8, BE) → the hashes of its 256 blocks of 4 KiB (8 bytes
//	        each, little-endian; one hash when all are the same): the
//	        block hashes of the cow and bitmap sources (dirty.BlockHashes)
//	vol/<volume ID>/          one nested bucket per filesystem
//	    info                  JSON: UUID, block size
//	    files/  ino (4, big-endian)              → the file record (binary, rec.go)
//	    runs/   start block (8, BE) + ino (4, BE) → length (uvarint) + kind
//	    links/  parent (4, BE) + child (4, BE) + name → empty
//	    itab/   inode-table block (8, BE) → a digest of each inode slot
//	            (8 bytes each, little-endian): a poll reads only the
//	            slots that changed
//
// Runs are stored in pieces of at most maxPiece blocks, so the runs that
// overlap a dirty block range [lo, hi) are found by one cursor Seek to
// lo-maxPiece; links give a directory's previous entries. A poll reads
// only the records of the inodes its dirty ranges touch, and saves only
// the records it changed. Names are stored as bytes: guest names are not
// always UTF-8.
package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/vmscope/vmscope/dirty"
)

const schema = "vmscope-state-4"

// oldSchemas are the layouts of earlier versions: such a state is read as
// an empty one (the next poll is a full pass that rewrites it).
var oldSchemas = []string{"vmscope-state-2", "vmscope-state-3"}

// maxPiece caps the blocks of one stored run.
const maxPiece = 64

var (
	bucket     = []byte("vmscope")
	keySchema  = []byte("schema")
	keyMeta    = []byte("meta")
	keyHashes  = []byte("hashes")
	keyInfo    = []byte("info")
	bFiles     = []byte("files")
	bRuns      = []byte("runs")
	bLinks     = []byte("links")
	bItab      = []byte("itab")
	bBlocks    = []byte("blocks")
	bUnscanned = []byte("unscanned")
	prefixVol  = "vol/"
	maxEntries = 1 << 26
)

// ErrBusy: another vmscope holds the state file (one poll at a time per
// state: bbolt's file lock, waited for up to the open timeout).
var ErrBusy = errors.New("state: in use by another vmscope")

// ErrRaced: the state file was created by another vmscope while this poll
// ran on it as an empty state; nothing was saved.
var ErrRaced = errors.New("state: created by another vmscope during this poll")

// DefaultTimeout is how long Open waits for another vmscope to release the
// state file.
const DefaultTimeout = 5 * time.Second

// DB is an open state file. A missing or empty (0-byte) file is not made a
// database until the first Save: a poll that fails leaves it as it was.
type DB struct {
	db      *bolt.DB // nil until a missing or empty file is first saved
	path    string
	timeout time.Duration
	// lock is the empty state file, flocked, while db is nil (a missing
	// file has nothing to lock: the first Save links its file in only if
	// no other vmscope did meanwhile).
	lock *os.File
}

// Option changes how Open opens a state file.
type Option func(*DB)

// WithTimeout sets how long Open waits for another vmscope to release the
// file (DefaultTimeout).
func WithTimeout(d time.Duration) Option { return func(db *DB) { db.timeout = d } }

// Open opens the state file at path: an existing database is locked (a
// second vmscope waits for the lock, then fails with ErrBusy); a missing or
// empty file is read as an empty state and written only by Save.
func Open(path string, opts ...Option) (*DB, error) {
	d := &DB{path: path, timeout: DefaultTimeout}
	for _, o := range opts {
		o(d)
	}
	deadline := time.Now().Add(d.timeout)
	for {
		fi, err := os.Stat(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return d, nil
		case err != nil:
			return nil, fmt.Errorf("state %s: %w", path, err)
		case fi.Size() > 0:
			db, err := bolt.Open(path, 0o600, d.boltOptions(time.Until(deadline)))
			if errors.Is(err, berrors.ErrTimeout) {
				return nil, d.busy()
			}
			if err != nil {
				return nil, fmt.Errorf("state %s: %w", path, err)
			}
			d.db = db
			return d, nil
		}
		// An empty file: lock it as bbolt would, and check it is still
		// the empty file at path once locked (a vmscope that held it may
		// have put a database in its place).
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("state %s: %w", path, err)
		}
		if err := flockUntil(f, deadline); err != nil {
			f.Close()
			if errors.Is(err, ErrBusy) {
				return nil, d.busy()
			}
			return nil, fmt.Errorf("state %s: %w", path, err)
		}
		if now, err := os.Stat(path); err == nil && now.Size() == 0 {
			if held, err := f.Stat(); err == nil && os.SameFile(now, held) {
				d.lock = f
				return d, nil
			}
		}
		f.Close() // replaced meanwhile: open what is there now
	}
}

func (d *DB) busy() error {
	return fmt.Errorf("state %s: %w (waited %v; one poll at a time per state file)", d.path, ErrBusy, d.timeout)
}

func (d *DB) boltOptions(timeout time.Duration) *bolt.Options {
	// A large initial map (address space, not memory: 256 MiB holds the
	// state of some 400,000 files) spares the commit of a first poll the
	// remaps of a growing file, each of which copies every node the
	// transaction holds.
	return &bolt.Options{Timeout: max(timeout, time.Millisecond), InitialMmapSize: 256 << 20}
}

// flockUntil takes an exclusive flock on f, waiting until deadline.
func flockUntil(f *os.File, deadline time.Time) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			return err
		}
		if time.Now().After(deadline) {
			return ErrBusy
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close closes the file.
func (d *DB) Close() error {
	var errs []error
	if d.db != nil {
		errs = append(errs, d.db.Close())
		d.db = nil
	}
	if d.lock != nil {
		errs = append(errs, d.lock.Close())
		d.lock = nil
	}
	return errors.Join(errs...)
}

// create makes the database of a missing or empty state file: it is written
// beside it and put in its place whole, so a Save that fails leaves the
// file as it was, and a file another vmscope created meanwhile is never
// overwritten (ErrRaced).
func (d *DB) create(fill func(db *bolt.DB) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(d.path), "."+filepath.Base(d.path)+".new-*")
	if err != nil {
		return fmt.Errorf("state %s: %w", d.path, err)
	}
	name := tmp.Name()
	tmp.Close()
	defer os.Remove(name)
	db, err := bolt.Open(name, 0o600, d.boltOptions(d.timeout))
	if err != nil {
		return fmt.Errorf("state %s: %w", d.path, err)
	}
	if err := fill(db); err != nil {
		db.Close()
		return err
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("state %s: %w", d.path, err)
	}
	if d.lock != nil {
		// The empty file is ours (locked): replace it.
		err = os.Rename(name, d.path)
	} else if err = os.Link(name, d.path); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("state %s: %w; nothing saved, run the poll again", d.path, ErrRaced)
	}
	if err != nil {
		return fmt.Errorf("state %s: %w", d.path, err)
	}
	if d.db, err = bolt.Open(d.path, 0o600, d.boltOptions(d.timeout)); err != nil {
		return fmt.Errorf("state %s: %w", d.path, err)
	}
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
	return nil
}

type volInfo struct {
	UUID      string `json:"uuid"`
	BlockSize int64  `json:"block_size"`
}

// Load returns the snapshot of the image called identity, nil when the
// state is empty, or an error wrapping dirty.ErrOtherImage. Its indexes
// read their records from the file on demand.
func (d *DB) Load(identity string) (*dirty.Snapshot, error) {
	var s *dirty.Snapshot
	if d.db == nil {
		return nil, nil // a missing or empty file: no poll saved yet
	}
	err := d.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		if v := string(b.Get(keySchema)); slices.Contains(oldSchemas, v) {
			return nil
		} else if v != schema {
			return fmt.Errorf("state: schema %q, this vmscope reads %q: remove the file to start again", v, schema)
		}
		s = &dirty.Snapshot{}
		err := json.Unmarshal(b.Get(keyMeta), s)
		if err != nil {
			return fmt.Errorf("state: meta: %w", err)
		}
		if s.Identity != identity {
			return fmt.Errorf("%w: it was made for [%s], this image is [%s]; use one state file per image", dirty.ErrOtherImage, s.Identity, identity)
		}
		if h := b.Get(keyHashes); len(h) > 0 {
			if len(h)%8 != 0 || len(h)/8 > maxEntries {
				return fmt.Errorf("state: hash index of %d bytes", len(h))
			}
			s.Hashes = make([]uint64, len(h)/8)
			for i := range s.Hashes {
				s.Hashes[i] = binary.LittleEndian.Uint64(h[i*8:])
			}
		}
		if b.Bucket(bBlocks) != nil {
			s.Blocks = dirty.NewBlockHashes(hashSource{d.db})
		}
		if s.Unscanned, err = loadUnscanned(b); err != nil {
			return err
		}
		s.Indexes = map[string]*dirty.Index{}
		return b.ForEach(func(k, v []byte) error {
			id, ok := strings.CutPrefix(string(k), prefixVol)
			if !ok || v != nil {
				return nil
			}
			var in volInfo
			if err := json.Unmarshal(b.Bucket(k).Get(keyInfo), &in); err != nil {
				return fmt.Errorf("state: %s: info: %w", k, err)
			}
			s.Indexes[id] = dirty.StoredIndex(id, in.UUID, in.BlockSize, &source{d.db, slices.Clone(k)})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// source reads one volume's records, each call in its own read
// transaction (a read transaction held open would block the commit).
type source struct {
	db  *bolt.DB
	vol []byte
}

func (s *source) view(fn func(vb *bolt.Bucket) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil || b.Bucket(s.vol) == nil {
			return fmt.Errorf("state: %s: gone", s.vol)
		}
		return fn(b.Bucket(s.vol))
	})
}

func (s *source) Rec(ino uint32) (*dirty.FileRec, error) {
	var r *dirty.FileRec
	err := s.view(func(vb *bolt.Bucket) error {
		v := vb.Bucket(bFiles).Get(be32(ino))
		if v == nil {
			return nil
		}
		var err error
		r, err = decodeRec(v)
		if err != nil {
			return fmt.Errorf("state: %s: inode %d: %w", s.vol, ino, err)
		}
		return nil
	})
	return r, err
}

func (s *source) Owners(lo, hi uint64, fn func(start, n uint64, ino uint32, kind dirty.Kind)) error {
	return s.view(func(vb *bolt.Bucket) error {
		from := uint64(0)
		if lo > maxPiece {
			from = lo - maxPiece
		}
		c := vb.Bucket(bRuns).Cursor()
		for k, v := c.Seek(be64(from)); k != nil; k, v = c.Next() {
			if len(k) != 12 {
				return fmt.Errorf("state: %s: run key of %d bytes", s.vol, len(k))
			}
			start := binary.BigEndian.Uint64(k)
			if start >= hi {
				break
			}
			n, kind, err := decodeRun(v)
			if err != nil {
				return fmt.Errorf("state: %s: run at block %d: %w", s.vol, start, err)
			}
			if start+n > lo {
				fn(start, n, binary.BigEndian.Uint32(k[8:]), kind)
			}
		}
		return nil
	})
}

func (s *source) Children(dir uint32) ([]uint32, error) {
	var out []uint32
	err := s.view(func(vb *bolt.Bucket) error {
		p := be32(dir)
		c := vb.Bucket(bLinks).Cursor()
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			if len(k) < 8 {
				return fmt.Errorf("state: %s: link key of %d bytes", s.vol, len(k))
			}
			ch := binary.BigEndian.Uint32(k[4:])
			if len(out) == 0 || out[len(out)-1] != ch {
				out = append(out, ch)
			}
		}
		return nil
	})
	slices.Sort(out)
	return slices.Compact(out), err
}

func (s *source) InodeBlock(blk uint64) ([]uint64, error) {
	var out []uint64
	err := s.view(func(vb *bolt.Bucket) error {
		ib := vb.Bucket(bItab)
		if ib == nil {
			return nil
		}
		v := ib.Get(be64(blk))
		if len(v)%8 != 0 || len(v) > 8<<10 {
			return fmt.Errorf("state: %s: inode-table block %d: %d bytes of digests", s.vol, blk, len(v))
		}
		for i := 0; i < len(v); i += 8 {
			out = append(out, binary.LittleEndian.Uint64(v[i:]))
		}
		return nil
	})
	return out, err
}

func putItab(b *bolt.Bucket, blk uint64, s []uint64) error {
	v := make([]byte, 0, 8*len(s))
	for _, x := range s {
		v = binary.LittleEndian.AppendUint64(v, x)
	}
	return b.Put(be64(blk), v)
}

func (s *source) All() (map[uint32]*dirty.FileRec, error) {
	out := map[uint32]*dirty.FileRec{}
	err := s.view(func(vb *bolt.Bucket) error {
		return vb.Bucket(bFiles).ForEach(func(k, v []byte) error {
			r, err := decodeRec(v)
			if err != nil || len(k) != 4 {
				return fmt.Errorf("state: %s: record %x: %v", s.vol, k, err)
			}
			out[binary.BigEndian.Uint32(k)] = r
			return nil
		})
	})
	return out, err
}

// Save stores s in one transaction: a volume whose index is the delta of a
// poll of the stored one gets only its changed records written; any other
// volume is written whole.
func (d *DB) Save(s *dirty.Snapshot) error {
	if d.db == nil {
		return d.create(func(db *bolt.DB) error { return save(db, s) })
	}
	return save(d.db, s)
}

func save(db *bolt.DB, s *dirty.Snapshot) error {
	return db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b != nil && string(b.Get(keySchema)) != schema {
			if err := tx.DeleteBucket(bucket); err != nil {
				return err
			}
			b = nil
		}
		if b == nil {
			var err error
			if b, err = tx.CreateBucket(bucket); err != nil {
				return err
			}
		}
		m := *s
		m.Unscanned = nil // in its own bucket
		meta, err := json.Marshal(&m)
		if err != nil {
			return err
		}
		if err := saveUnscanned(b, s.Unscanned); err != nil {
			return fmt.Errorf("state: unscanned files: %w", err)
		}
		h := make([]byte, 8*len(s.Hashes))
		for i, x := range s.Hashes {
			binary.LittleEndian.PutUint64(h[i*8:], x)
		}
		for _, kv := range [][2][]byte{{keySchema, []byte(schema)}, {keyMeta, meta}, {keyHashes, h}} {
			if err := b.Put(kv[0], kv[1]); err != nil {
				return err
			}
		}
		if err := saveBlocks(b, s.Blocks); err != nil {
			return fmt.Errorf("state: block hashes: %w", err)
		}
		// Volumes no longer there.
		var drop [][]byte
		b.ForEach(func(k, v []byte) error {
			if id, ok := strings.CutPrefix(string(k), prefixVol); ok && v == nil && s.Indexes[id] == nil {
				drop = append(drop, slices.Clone(k))
			}
			return nil
		})
		for _, k := range drop {
			if err := b.DeleteBucket(k); err != nil {
				return err
			}
		}
		for id, x := range s.Indexes {
			if err := saveVolume(b, id, x); err != nil {
				return fmt.Errorf("state: %s: %w", id, err)
			}
		}
		return nil
	})
}

// saveUnscanned replaces the stored unscanned files by u.
func saveUnscanned(b *bolt.Bucket, u map[string][]uint32) error {
	if b.Bucket(bUnscanned) != nil {
		if err := b.DeleteBucket(bUnscanned); err != nil {
			return err
		}
	}
	if len(u) == 0 {
		return nil
	}
	ub, err := b.CreateBucket(bUnscanned)
	if err != nil {
		return err
	}
	for vol, inos := range u {
		for _, ino := range inos {
			if err := ub.Put(unscannedKey(vol, ino), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func unscannedKey(vol string, ino uint32) []byte {
	return binary.BigEndian.AppendUint32(append([]byte(vol), 0), ino)
}

func loadUnscanned(b *bolt.Bucket) (map[string][]uint32, error) {
	ub := b.Bucket(bUnscanned)
	if ub == nil {
		return nil, nil
	}
	out := map[string][]uint32{}
	err := ub.ForEach(func(k, _ []byte) error {
		i := bytes.IndexByte(k, 0)
		if i < 0 || len(k) != i+5 {
			return fmt.Errorf("state: unscanned file key %x", k)
		}
		vol := string(k[:i])
		out[vol] = append(out[vol], binary.BigEndian.Uint32(k[i+1:]))
		return nil
	})
	return out, err
}

// hashSource reads stored block-hash groups, each in its own read
// transaction.
type hashSource struct{ db *bolt.DB }

func (h hashSource) HashGroup(g uint64) ([]uint64, error) {
	var out []uint64
	err := h.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil || b.Bucket(bBlocks) == nil {
			return nil
		}
		var err error
		out, err = decodeHashGroup(g, b.Bucket(bBlocks).Get(be64(g)))
		return err
	})
	return out, err
}

// decodeHashGroup decodes a stored group: HashGroup hashes, or one (a
// uniform group); nil for none.
func decodeHashGroup(g uint64, v []byte) ([]uint64, error) {
	switch len(v) {
	case 0:
		return nil, nil
	case 8:
		return []uint64{binary.LittleEndian.Uint64(v)}, nil
	case 8 * dirty.HashGroup:
		out := make([]uint64, dirty.HashGroup)
		for i := range out {
			out[i] = binary.LittleEndian.Uint64(v[8*i:])
		}
		return out, nil
	}
	return nil, fmt.Errorf("state: block hashes of group %d: %d bytes", g, len(v))
}

func (h hashSource) EachGroup(fn func(g uint64, hashes []uint64)) error {
	return h.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil || b.Bucket(bBlocks) == nil {
			return nil
		}
		return b.Bucket(bBlocks).ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return fmt.Errorf("state: block hashes: key of %d bytes", len(k))
			}
			s, err := decodeHashGroup(binary.BigEndian.Uint64(k), v)
			if err == nil && s != nil {
				fn(binary.BigEndian.Uint64(k), s)
			}
			return err
		})
	})
}

// saveBlocks stores the changed block-hash groups (all of them, in a new
// bucket, for a new map); nil removes them.
func saveBlocks(b *bolt.Bucket, h *dirty.BlockHashes) error {
	groups, replace := map[uint64][]uint64(nil), true
	if h != nil {
		groups, replace = h.Changed()
	}
	if replace && b.Bucket(bBlocks) != nil {
		if err := b.DeleteBucket(bBlocks); err != nil {
			return err
		}
	}
	if h == nil {
		return nil
	}
	bb, err := b.CreateBucketIfNotExists(bBlocks)
	if err != nil {
		return err
	}
	bb.FillPercent = 0.9
	for _, g := range slices.Sorted(maps.Keys(groups)) {
		s := groups[g]
		if len(s) != dirty.HashGroup && len(s) != 1 {
			continue
		}
		var v []byte
		if slices.Max(s) == slices.Min(s) {
			v = binary.LittleEndian.AppendUint64(nil, s[0])
		} else {
			v = make([]byte, 0, 8*len(s))
			for _, x := range s {
				v = binary.LittleEndian.AppendUint64(v, x)
			}
		}
		if err := bb.Put(be64(g), v); err != nil {
			return err
		}
	}
	return nil
}

func saveVolume(b *bolt.Bucket, id string, x *dirty.Index) error {
	name := []byte(prefixVol + id)
	dx, delta := x.Delta()
	if delta && b.Bucket(name) != nil {
		vb := b.Bucket(name)
		files, runs, links := vb.Bucket(bFiles), vb.Bucket(bRuns), vb.Bucket(bLinks)
		ib, err := vb.CreateBucketIfNotExists(bItab)
		if err != nil {
			return err
		}
		for blk, s := range dx.Itab {
			if err := putItab(ib, blk, s); err != nil {
				return err
			}
		}
		for _, ino := range dx.Deleted {
			if err := unlink(files, runs, links, ino); err != nil {
				return err
			}
			if err := files.Delete(be32(ino)); err != nil {
				return err
			}
		}
		for ino, r := range dx.Changed {
			if err := unlink(files, runs, links, ino); err != nil {
				return err
			}
			if err := putRec(files, runs, links, ino, r); err != nil {
				return err
			}
		}
		return nil
	}
	if b.Bucket(name) != nil {
		if err := b.DeleteBucket(name); err != nil {
			return err
		}
	}
	vb, err := b.CreateBucket(name)
	if err != nil {
		return err
	}
	info, _ := json.Marshal(volInfo{x.UUID, x.BlockSize})
	if err := vb.Put(keyInfo, info); err != nil {
		return err
	}
	var bs [4]*bolt.Bucket
	for i, n := range [][]byte{bFiles, bRuns, bLinks, bItab} {
		if bs[i], err = vb.CreateBucket(n); err != nil {
			return err
		}
	}
	var inos []uint32
	recs := map[uint32]*dirty.FileRec{}
	x.Each(func(ino uint32, r *dirty.FileRec) {
		inos = append(inos, ino)
		recs[ino] = r
	})
	if err := x.Err(); err != nil {
		return err
	}
	var blks []uint64
	itab := map[uint64][]uint64{}
	x.InodeBlocks(func(blk uint64, s []uint64) { blks = append(blks, blk); itab[blk] = s })
	slices.Sort(blks)
	bs[3].FillPercent = 0.9
	for _, blk := range blks {
		if err := putItab(bs[3], blk, itab[blk]); err != nil {
			return err
		}
	}
	// Written in key order, bbolt fills its pages; later polls change a
	// few keys here and there.
	slices.Sort(inos)
	var runs, links [][]byte
	bs[0].FillPercent = 0.9
	for _, ino := range inos {
		r := recs[ino]
		if err := bs[0].Put(be32(ino), encodeRec(r)); err != nil {
			return err
		}
		runs = append(runs, runKeys(ino, r)...)
		for _, l := range r.Names {
			links = append(links, linkKey(l, ino))
		}
	}
	slices.SortFunc(runs, func(a, b []byte) int { return bytes.Compare(a[:12], b[:12]) })
	slices.SortFunc(links, bytes.Compare)
	bs[1].FillPercent, bs[2].FillPercent = 0.9, 0.9
	for _, k := range runs {
		if err := bs[1].Put(k[:12], k[12:]); err != nil {
			return err
		}
	}
	for _, k := range links {
		if err := bs[2].Put(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// unlink removes the runs and links of the stored record of ino.
func unlink(files, runs, links *bolt.Bucket, ino uint32) error {
	v := files.Get(be32(ino))
	if v == nil {
		return nil
	}
	r, err := decodeRec(v)
	if err != nil {
		return fmt.Errorf("inode %d: %w", ino, err)
	}
	for _, k := range runKeys(ino, r) {
		if err := runs.Delete(k[:12]); err != nil {
			return err
		}
	}
	for _, l := range r.Names {
		if err := links.Delete(linkKey(l, ino)); err != nil {
			return err
		}
	}
	return nil
}

func putRec(files, runs, links *bolt.Bucket, ino uint32, r *dirty.FileRec) error {
	if err := files.Put(be32(ino), encodeRec(r)); err != nil {
		return err
	}
	for _, k := range runKeys(ino, r) {
		if err := runs.Put(k[:12], k[12:]); err != nil {
			return err
		}
	}
	for _, l := range r.Names {
		if err := links.Put(linkKey(l, ino), nil); err != nil {
			return err
		}
	}
	return nil
}

// runKeys returns key (12 bytes) + value of every stored piece of r's runs.
func runKeys(ino uint32, r *dirty.FileRec) [][]byte {
	var out [][]byte
	for _, run := range r.Runs {
		for s := run.Start; s < run.Start+run.Len; s += maxPiece {
			n := min(maxPiece, run.Start+run.Len-s)
			k := binary.BigEndian.AppendUint64(nil, s)
			k = binary.BigEndian.AppendUint32(k, ino)
			k = binary.AppendUvarint(k, n)
			k = append(k, run.Kind...)
			out = append(out, k)
		}
	}
	return out
}

func decodeRun(v []byte) (uint64, dirty.Kind, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || n == 0 || n > maxPiece {
		return 0, "", errBad
	}
	return n, dirty.Kind(v[k:]), nil
}

func linkKey(l dirty.Link, ino uint32) []byte {
	k := binary.BigEndian.AppendUint32(nil, l.Parent)
	k = binary.BigEndian.AppendUint32(k, ino)
	return append(k, l.Name...)
}

func be32(x uint32) []byte { return binary.BigEndian.AppendUint32(nil, x) }
func be64(x uint64) []byte { return binary.BigEndian.AppendUint64(nil, x) }
