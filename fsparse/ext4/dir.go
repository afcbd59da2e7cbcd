package ext4

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/vmscope/vmscope/vmerr"
)

// DirEntry is one directory entry.
type DirEntry struct {
	// Name is the entry's name as stored: bytes, not a path. It may hold
	// anything a corrupt or hostile directory holds; Problem says when it
	// cannot be a path element.
	Name string
	Ino  uint32
	Type fs.FileMode // type bits only
	// Offset is the byte offset of the entry's record in the filesystem,
	// -1 when it lies in an inline directory's system.data attribute.
	Offset int64
	// Problem is nil for a name that can be a path element. For a name
	// that holds '/' or NUL, is empty, or is "." or ".." outside the first
	// two slots of the directory, it is a vmerr.Problem naming the
	// directory inode and Offset, wrapping ErrBadName.
	Problem error
}

// ErrBadName is the reason of a DirEntry.Problem: the name cannot be a
// path element. Such an entry is listed, never joined into a path as it is.
var ErrBadName = vmerr.New("ext4: name is not a valid path element", vmerr.ErrCorrupt)

// nameProblem says why name cannot be a path element, "" when it can.
// slot is the record's index in the directory's first block (-1 elsewhere):
// "." may only be slot 0 and ".." slot 1.
func nameProblem(name []byte, slot int) string {
	switch {
	case len(name) == 0:
		return "empty name"
	case len(name) == 1 && name[0] == '.' && slot != 0:
		return `"." outside the first slot`
	case len(name) == 2 && name[0] == '.' && name[1] == '.' && slot != 1:
		return `".." outside the second slot`
	case bytes.IndexByte(name, '/') >= 0:
		return "name holds '/'"
	case bytes.IndexByte(name, 0) >= 0:
		return "name holds NUL"
	}
	return ""
}

// inodeByte is the byte offset of inode ino in the filesystem.
func (f *FS) inodeByte(ino uint32) (int64, bool) {
	sb := f.sb
	if ino < 1 || ino > sb.InodesCount {
		return 0, false
	}
	g := (ino - 1) / sb.InodesPerGroup
	if g >= f.ngroup {
		return 0, false
	}
	return int64(f.itable[g]*f.bs + uint64((ino-1)%sb.InodesPerGroup)*uint64(sb.InodeSize)), true
}

// dirRun is how many directory blocks are read with one ReadAt.
const dirRunBytes = 256 << 10

// dirRuns holds the buffers of directory reads (*[]byte, grown as needed
// up to a run), reused from one directory to the next of a walk.
var dirRuns = sync.Pool{New: func() any { return new([]byte) }}

// dirRun returns a buffer of n bytes (a run, or one block when blocks
// are larger than a run) and the function that gives it back.
func dirRun(n uint64) ([]byte, func()) {
	p := dirRuns.Get().(*[]byte)
	if uint64(cap(*p)) < n {
		*p = make([]byte, n)
	}
	return (*p)[:n], func() { dirRuns.Put(p) }
}

func direntType(t uint8) (fs.FileMode, bool) {
	switch t {
	case 1:
		return 0, true
	case 2:
		return fs.ModeDir, true
	case 3:
		return fs.ModeDevice | fs.ModeCharDevice, true
	case 4:
		return fs.ModeDevice, true
	case 5:
		return fs.ModeNamedPipe, true
	case 6:
		return fs.ModeSocket, true
	case 7:
		return fs.ModeSymlink, true
	}
	return 0, false
}

// dirVisitor gets each live entry except "." and ".." in their slots; name
// is only valid during the call, off is the record's byte offset in the
// filesystem (-1 when unknown), bad says why the name cannot be a path
// element ("" when it can). It returns true to stop.
type dirVisitor func(name []byte, ino uint32, ftype uint8, off int64, bad string) bool

// recLen decodes rec_len as ext2fs_get_rec_len does for 64 KiB blocks.
func recLen(v uint16, bs int) int {
	if bs < 65536 {
		return int(v)
	}
	if v == 65535 || v == 0 {
		return bs
	}
	return int(v&65532) | int(v&3)<<16
}

// parseDirChunk parses the records of one directory block (or one inline
// region). where names the chunk for errors; base is the chunk's byte offset
// in the filesystem (-1 when unknown); first says it is the directory's
// first block, whose first two records are "." and "..". It returns
// stop=true when fn asked to stop.
func (f *FS) parseDirChunk(b []byte, where func() string, base int64, first bool, fn dirVisitor) (bool, error) {
	filetype := f.sb.FeatureIncompat&incompatFiletype != 0
	off := 0
	// Every record is at least 12 bytes, so the loop ends within len(b)/12
	// steps.
	for slot := 0; off < len(b); slot++ {
		if len(b)-off < 8 {
			return false, fmt.Errorf("%s: record at offset %d: %d bytes left: %w", where(), off, len(b)-off, ErrCorrupt)
		}
		ino := le32(b, off)
		rl := recLen(le16(b, off+4), len(b))
		var nl int
		var ft uint8
		if filetype {
			nl = int(b[off+6])
			ft = b[off+7]
		} else {
			nl = int(le16(b, off+6))
		}
		if rl < 12 || rl&3 != 0 || rl > len(b)-off || nl+8 > rl || nl > 255 {
			return false, fmt.Errorf("%s: record at offset %d: rec_len %d name_len %d: %w", where(), off, rl, nl, ErrCorrupt)
		}
		if ino != 0 {
			if ino > f.sb.InodesCount {
				return false, fmt.Errorf("%s: record at offset %d: inode %d > %d: %w", where(), off, ino, f.sb.InodesCount, ErrCorrupt)
			}
			name := b[off+8 : off+8+nl]
			s := -1
			if first {
				s = slot
			}
			bad := nameProblem(name, s)
			dot := bad == "" && len(name) <= 2 && name[0] == '.' && (len(name) == 1 || name[1] == '.')
			if !dot {
				at := int64(-1)
				if base >= 0 {
					at = base + int64(off)
				}
				if fn(name, ino, ft, at, bad) {
					return true, nil
				}
			}
		}
		off += rl
	}
	return false, nil
}

// walkDir calls fn for each entry of directory inode in, in on-disk order.
func (f *FS) walkDir(in *Inode, fn dirVisitor) error {
	if !in.IsDir() {
		return fmt.Errorf("ext4: inode %d: %w", in.Ino, ErrNotDir)
	}
	if in.HasInlineData() {
		where := func() string { return fmt.Sprintf("ext4: inline directory inode %d", in.Ino) }
		if pi := le32(in.block[:], 0); pi == 0 || pi > f.sb.InodesCount {
			return fmt.Errorf("%s: parent inode %d: %w", where(), pi, ErrCorrupt)
		}
		base := int64(-1)
		if o, ok := f.inodeByte(in.Ino); ok {
			base = o + 40 + 4 // i_block, after the parent inode number
		}
		stop, err := f.parseDirChunk(in.block[4:], where, base, false, fn)
		if err != nil || stop {
			return err
		}
		val, ok, err := in.findXattr(7, "data")
		if err != nil || !ok || len(val) == 0 {
			return err
		}
		wx := func() string { return fmt.Sprintf("ext4: inline directory inode %d (system.data)", in.Ino) }
		_, err = f.parseDirChunk(val, wx, -1, false, fn)
		return err
	}
	if err := f.checkSize(in); err != nil {
		return err
	}
	m, err := f.mapInode(in)
	if err != nil {
		return err
	}
	bs := f.bs
	return f.dirRuns(in, m, func(b []byte, lb, pb uint64, readErr error) (bool, error) {
		if readErr != nil {
			return false, fmt.Errorf("ext4: directory inode %d at block %d: %w", in.Ino, pb, readErr)
		}
		for j := uint64(0); j < uint64(len(b))/bs; j++ {
			blk, fblk := pb+j, lb+j
			where := func() string {
				return fmt.Sprintf("ext4: directory inode %d block %d (file block %d)", in.Ino, blk, fblk)
			}
			stop, err := f.parseDirChunk(b[j*bs:(j+1)*bs], where, int64(blk*bs), fblk == 0, fn)
			if err != nil || stop {
				return stop, err
			}
		}
		return false, nil
	})
}

// dirRuns reads the written blocks of directory inode in (mapped as m)
// below its size in runs of up to dirRunBytes, and calls fn with each run,
// its first file block and first physical block, and the error of reading
// it whole (b then holds what was read). fn stops the walk by returning
// true or an error.
func (f *FS) dirRuns(in *Inode, m *blockMap, fn func(b []byte, lb, pb uint64, readErr error) (bool, error)) error {
	bs := f.bs
	nblk := (in.Size + bs - 1) / bs
	runBlocks := max(uint64(dirRunBytes)/bs, 1)
	buf, done := dirRun(min(runBlocks, nblk) * bs)
	defer done()
	for _, e := range m.ext {
		if e.Unwritten || e.Logical >= nblk {
			continue
		}
		n := min(e.Len, nblk-e.Logical)
		for i := uint64(0); i < n; i += runBlocks {
			k := min(runBlocks, n-i)
			b := buf[:k*bs]
			// Straight from the device: a directory is read once per
			// walk, and its blocks seldom share a cache unit.
			stop, err := fn(b, e.Logical+i, e.Physical+i, f.readBlocksDirect(b, e.Physical+i))
			if err != nil || stop {
				return err
			}
		}
	}
	return nil
}

// ReadDirInode lists directory inode ino in on-disk order, without "." and
// ".." in their slots. Without the filetype feature (or for an unknown
// dirent type) the type comes from the entry's inode. An entry whose name
// cannot be a path element is listed with its Problem set.
func (f *FS) ReadDirInode(ino uint32) ([]DirEntry, error) {
	return f.AppendDirInode(nil, ino)
}

// AppendDirInode is ReadDirInode appending to out (a caller that lists
// many directories reuses one slice); on error it returns nil.
func (f *FS) AppendDirInode(out []DirEntry, ino uint32) ([]DirEntry, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return nil, err
	}
	var typeErr error
	err = f.walkDir(in, func(name []byte, ino uint32, ft uint8, off int64, bad string) bool {
		t, ok := direntType(ft)
		if !ok {
			ci, err := f.Inode(ino)
			if err != nil {
				typeErr = err
				return true
			}
			t = ci.FileMode().Type()
		}
		de := DirEntry{Name: string(name), Ino: ino, Type: t, Offset: off}
		if bad != "" {
			de.Problem = vmerr.Problem{
				Where:  fmt.Sprintf("ext4: directory inode %d: entry %q (inode %d)", in.Ino, name, ino),
				Offset: off,
				Err:    fmt.Errorf("%w: %s", ErrBadName, bad),
			}
		}
		out = append(out, de)
		return false
	})
	if err == nil {
		err = typeErr
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// lookupIn finds name in directory inode in; 0 when missing.
func (f *FS) lookupIn(in *Inode, name string) (uint32, error) {
	var found uint32
	nb := []byte(name)
	err := f.walkDir(in, func(n []byte, ino uint32, _ uint8, _ int64, bad string) bool {
		if bad == "" && bytes.Equal(n, nb) {
			found = ino
			return true
		}
		return false
	})
	return found, err
}

// validPath is fs.ValidPath without the UTF-8 rule: ext4 names are bytes.
func validPath(name string) bool {
	if name == "." {
		return true
	}
	for {
		i := strings.IndexByte(name, '/')
		elem := name
		if i >= 0 {
			elem = name[:i]
		}
		if elem == "" || elem == "." || elem == ".." {
			return false
		}
		if i < 0 {
			return true
		}
		name = name[i+1:]
	}
}

// Lookup resolves an io/fs-style path ("." is the root, "a/b") to an inode
// number. It follows no symlinks. Names are matched byte for byte, so
// non-UTF-8 names can be looked up. A missing name gives an *fs.PathError
// wrapping fs.ErrNotExist.
func (f *FS) Lookup(name string) (uint32, error) {
	ino, _, err := f.lookup("lookup", name)
	return ino, err
}

func (f *FS) lookup(op, name string) (uint32, *Inode, error) {
	if !validPath(name) {
		return 0, nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	in, err := f.Inode(rootIno)
	if err != nil {
		return 0, nil, &fs.PathError{Op: op, Path: name, Err: err}
	}
	if name == "." {
		return rootIno, in, nil
	}
	rest := name
	// Each step consumes one path element: bounded by len(name).
	for rest != "" {
		elem := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			elem, rest = rest[:i], rest[i+1:]
		} else {
			rest = ""
		}
		if !in.IsDir() {
			return 0, nil, &fs.PathError{Op: op, Path: name, Err: ErrNotDir}
		}
		ino, err := f.lookupIn(in, elem)
		if err != nil {
			return 0, nil, &fs.PathError{Op: op, Path: name, Err: err}
		}
		if ino == 0 {
			return 0, nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
		}
		in, err = f.Inode(ino)
		if err != nil {
			return 0, nil, &fs.PathError{Op: op, Path: name, Err: err}
		}
	}
	return in.Ino, in, nil
}

// maxSymlink caps the size of a symlink target we read.
const maxSymlink = 64 << 10

// ReadlinkInode returns the target of symlink inode ino.
func (f *FS) ReadlinkInode(ino uint32) (string, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return "", err
	}
	return f.readlink(in)
}

var errNotSymlink = errors.New("not a symbolic link")

func (f *FS) readlink(in *Inode) (string, error) {
	if !in.IsSymlink() {
		return "", fmt.Errorf("ext4: inode %d: %w", in.Ino, errNotSymlink)
	}
	if in.Size > maxSymlink {
		return "", fmt.Errorf("ext4: symlink inode %d: size %d: %w", in.Ino, in.Size, ErrCorrupt)
	}
	fl, err := f.openInode(in, "")
	if err != nil {
		return "", err
	}
	b := make([]byte, in.Size)
	if _, err := fl.ReadAt(b, 0); err != nil && len(b) > 0 {
		return "", err
	}
	return string(b), nil
}

// Readlink returns the target of the symlink at path name.
func (f *FS) Readlink(name string) (string, error) {
	_, in, err := f.lookup("readlink", name)
	if err != nil {
		return "", err
	}
	s, err := f.readlink(in)
	if err != nil {
		if errors.Is(err, errNotSymlink) {
			err = fs.ErrInvalid
		}
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	return s, nil
}
