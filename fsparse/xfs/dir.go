package xfs

import (
	"bytes"
	"fmt"
	"io/fs"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
)

const (
	dirBlockMagicV4 = 0x58443242 // "XD2B": single-block directory
	dirDataMagicV4  = 0x58443244 // "XD2D": data block of a leaf/node directory
	dirBlockMagicV5 = 0x58444233 // "XDB3"
	dirDataMagicV5  = 0x58444433 // "XDD3"

	// dirLeafOffset is the byte offset of a directory's leaf segment: data
	// blocks (the entries) lie below it.
	dirLeafOffset = 1 << 35
	// maxDirBytes caps the data segment read when listing one directory.
	maxDirBytes = 1 << 30
)

// DirEntry is one name of a directory.
type DirEntry struct {
	Name string
	Ino  uint64
	// Type is the entry's file type when the filesystem records it
	// (ftype), else 0 with TypeKnown false.
	Type      fs.FileMode
	TypeKnown bool
	// Offset is the entry's byte offset on the volume (-1 for shortform
	// entries, which live in the inode at Offset's inode).
	Offset int64
	// Problem is set when the name cannot be a path element ('/' or NUL
	// in it, empty, "." or ".."): the entry is listed, escaped by the
	// caller.
	Problem error
}

// ErrBadName marks a name that cannot be a path element.
var ErrBadName = vmerr.New("xfs: name is not a valid path element", vmerr.ErrCorrupt)

func ftypeMode(t uint8) (fs.FileMode, bool) {
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

func (f *FS) entry(name []byte, ino uint64, ftype uint8, off int64) DirEntry {
	e := DirEntry{Name: string(name), Ino: ino, Offset: off}
	if f.sb.HasFtype() {
		e.Type, e.TypeKnown = ftypeMode(ftype)
	}
	if len(name) == 0 || bytes.IndexByte(name, '/') >= 0 || bytes.IndexByte(name, 0) >= 0 {
		e.Problem = fmt.Errorf("%w: %q", ErrBadName, name)
	}
	return e
}

// ReadDirInode lists directory inode ino, without "." and "..", in on-disk
// order.
func (f *FS) ReadDirInode(ino uint64) ([]DirEntry, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return nil, err
	}
	return f.readDir(in)
}

func (f *FS) readDir(in *Inode) ([]DirEntry, error) {
	if !in.IsDir() {
		return nil, fmt.Errorf("xfs: inode %d: %w", in.Ino, ErrNotDir)
	}
	var out []DirEntry
	if in.Format == fmtLocal {
		err := f.shortform(in, func(e DirEntry) bool { out = append(out, e); return true })
		return out, err
	}
	err := f.dataBlocks(in, func(e DirEntry) bool { out = append(out, e); return true })
	return out, err
}

// shortform walks a directory stored in the inode.
func (f *FS) shortform(in *Inode, fn func(DirEntry) bool) error {
	d := in.data[:in.Size]
	base := in.off + int64(f.coreSize)
	if len(d) < 6 {
		return inoErr(in.Ino, base, "shortform directory of %d bytes", len(d))
	}
	// count is every entry's; i8count, those whose inode number needs
	// 8 bytes: when there is one, every inode number takes 8 bytes.
	count, i8 := int(d[0]), int(d[1])
	isz := 4
	if i8 > count {
		return inoErr(in.Ino, base+1, "shortform directory: %d entries with 8-byte inode numbers out of %d", i8, count)
	}
	if i8 != 0 {
		isz = 8
	}
	p := 2 + isz
	if p > len(d) {
		return inoErr(in.Ino, base, "shortform directory header past its %d bytes", len(d))
	}
	ft := 0
	if f.sb.HasFtype() {
		ft = 1
	}
	for i := 0; i < count; i++ {
		if p+3 > len(d) {
			return inoErr(in.Ino, base+int64(p), "shortform entry %d past the directory's %d bytes", i, len(d))
		}
		n := int(d[p])
		q := p + 3 + n + ft + isz
		if n == 0 || q > len(d) {
			return inoErr(in.Ino, base+int64(p), "shortform entry %d: name of %d bytes overruns the directory", i, n)
		}
		name := d[p+3 : p+3+n]
		var t uint8
		if ft == 1 {
			t = d[p+3+n]
		}
		var ino uint64
		if isz == 8 {
			ino = be64(d, p+3+n+ft)
		} else {
			ino = uint64(be32(d, p+3+n+ft))
		}
		e := f.entry(name, ino, t, -1)
		if string(name) == "." || string(name) == ".." {
			e.Problem = fmt.Errorf("%w: %q in a shortform entry", ErrBadName, name)
		}
		if !fn(e) {
			return nil
		}
		p = q
	}
	return nil
}

// dataBlocks walks the entries of the data blocks of a block, leaf or node
// directory: every directory block below the leaf segment.
func (f *FS) dataBlocks(in *Inode, fn func(DirEntry) bool) error {
	m, err := f.mapFork(in)
	if err != nil {
		return err
	}
	fsbPerDir := uint64(f.dirBlk / f.bs)
	leafBlk := uint64(dirLeafOffset / f.bs)
	buf := make([]byte, f.dirBlk)
	var total int64
	// Directory blocks: runs of fsbPerDir file blocks, each starting at a
	// multiple of fsbPerDir.
	for i := 0; i < len(m.ext); i++ {
		e := m.ext[i]
		if e.Logical >= leafBlk {
			break
		}
		if e.Unwritten {
			return inoErr(in.Ino, int64(e.Physical)*f.bs, "unwritten extent in a directory")
		}
		for lb := e.Logical; lb < e.Logical+e.Len && lb < leafBlk; lb++ {
			if lb%fsbPerDir != 0 {
				continue
			}
			total += f.dirBlk
			if total > maxDirBytes {
				return inoErr(in.Ino, -1, "directory data over %d bytes", maxDirBytes)
			}
			off, err := f.readFileBlocks(m.ext, i, lb, buf)
			if err != nil {
				return err
			}
			stop, err := f.dataBlock(in, buf, off, fn)
			if err != nil || stop {
				return err
			}
		}
	}
	return nil
}

// readFileBlocks reads len(buf) bytes of the file mapped by ext from file
// block lb (inside ext[i]), and returns the volume offset of the first.
func (f *FS) readFileBlocks(ext []Extent, i int, lb uint64, buf []byte) (int64, error) {
	first := int64(-1)
	for got := 0; got < len(buf); got += int(f.bs) {
		b := lb + uint64(got)/uint64(f.bs)
		for i < len(ext) && ext[i].Logical+ext[i].Len <= b {
			i++
		}
		if i >= len(ext) || ext[i].Logical > b {
			return 0, vmerr.Corrupt(ErrCorrupt, "xfs directory block", -1, "file block %d is a hole", b)
		}
		off := int64(ext[i].Physical+b-ext[i].Logical) * f.bs
		if first < 0 {
			first = off
		}
		if err := f.readAt(buf[got:got+int(f.bs)], off); err != nil {
			return 0, err
		}
	}
	return first, nil
}

// dataBlock walks the entries of one directory data block b, read at
// volume offset off. It reports whether fn stopped the walk.
func (f *FS) dataBlock(in *Inode, b []byte, off int64, fn func(DirEntry) bool) (bool, error) {
	magic := be32(b, 0)
	hdr, end := 16, len(b)
	v5 := f.sb.CRC()
	if v5 {
		hdr = 64
	}
	where := fmt.Sprintf("directory block of inode %d", in.Ino)
	switch {
	case !v5 && magic == dirBlockMagicV4, v5 && magic == dirBlockMagicV5:
		// The leaf entries and the tail end the block.
		count := int64(be32(b, len(b)-8))
		if count > int64(len(b))/8 {
			return false, inoErr(in.Ino, off, "%s: %d leaf entries", where, count)
		}
		end = len(b) - 8 - int(count)*8
	case !v5 && magic == dirDataMagicV4, v5 && magic == dirDataMagicV5:
	default:
		return false, inoErr(in.Ino, off, "%s: bad magic %#x", where, magic)
	}
	if v5 {
		if !crcOK(b, 4) {
			return false, inoErr(in.Ino, off, "%s: CRC mismatch", where)
		}
		if be64(b, 40) != in.Ino {
			return false, inoErr(in.Ino, off, "%s: owned by inode %d", where, be64(b, 40))
		}
	}
	if end < hdr {
		return false, inoErr(in.Ino, off, "%s: leaf area overlaps the header", where)
	}
	ft := 0
	if f.sb.HasFtype() {
		ft = 1
	}
	for p := hdr; p < end; {
		if p+8 > end {
			return false, inoErr(in.Ino, off+int64(p), "%s: entry past the data area", where)
		}
		if be16(b, p) == 0xffff { // unused space
			n := int(be16(b, p+2))
			if n < 8 || n%8 != 0 || p+n > end {
				return false, inoErr(in.Ino, off+int64(p), "%s: free space of %d bytes", where, n)
			}
			p += n
			continue
		}
		if p+11 > end {
			return false, inoErr(in.Ino, off+int64(p), "%s: entry past the data area", where)
		}
		ino := be64(b, p)
		n := int(b[p+8])
		size := (8 + 1 + n + ft + 2 + 7) &^ 7
		if n == 0 || p+size > end {
			return false, inoErr(in.Ino, off+int64(p), "%s: entry of %d bytes (name %d) overruns the block", where, size, n)
		}
		if tag := int(be16(b, p+size-2)); tag != p {
			return false, inoErr(in.Ino, off+int64(p), "%s: entry tag %d, expected %d", where, tag, p)
		}
		name := b[p+9 : p+9+n]
		var t uint8
		if ft == 1 {
			t = b[p+9+n]
		}
		if !(string(name) == "." || string(name) == "..") {
			if !fn(f.entry(name, ino, t, off+int64(p))) {
				return true, nil
			}
		}
		p += size
	}
	return false, nil
}

// maxCachedNames caps the names the lookup cache holds.
const maxCachedNames = 1 << 20

// lookupIn finds name in directory in; 0 when it is not there. A block,
// leaf or node directory is read whole once and its names kept (bounded),
// so looking up every name of a big directory is not quadratic.
func (f *FS) lookupIn(in *Inode, name string) (uint64, error) {
	var found uint64
	visit := func(e DirEntry) bool {
		if e.Name == name {
			found = e.Ino
			return false
		}
		return true
	}
	if in.Format == fmtLocal {
		err := f.shortform(in, visit)
		return found, err
	}
	f.cacheMu.Lock()
	names, ok := f.cache[in.Ino]
	f.cacheMu.Unlock()
	if ok {
		return names[name], nil
	}
	names = map[string]uint64{}
	err := f.dataBlocks(in, func(e DirEntry) bool {
		if _, dup := names[e.Name]; !dup {
			names[e.Name] = e.Ino
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	f.cacheMu.Lock()
	if f.cached+len(names) > maxCachedNames {
		f.cache, f.cached = nil, 0
	}
	if f.cache == nil {
		f.cache = map[uint64]map[string]uint64{}
	}
	f.cache[in.Ino] = names
	f.cached += len(names)
	f.cacheMu.Unlock()
	return names[name], nil
}

// validPath is fs.ValidPath without the UTF-8 rule: XFS names are bytes.
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

// Lookup resolves an io/fs path ("." is the root) to an inode number,
// following no symlinks. A missing name gives an *fs.PathError wrapping
// fs.ErrNotExist.
func (f *FS) Lookup(name string) (uint64, error) {
	in, err := f.lookup("lookup", name)
	if err != nil {
		return 0, err
	}
	return in.Ino, nil
}

func (f *FS) lookup(op, name string) (*Inode, error) {
	if !validPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	in, err := f.Inode(f.sb.RootIno)
	if err != nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: err}
	}
	if name == "." {
		return in, nil
	}
	rest := name
	for rest != "" { // one element per step: bounded by len(name)
		elem := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			elem, rest = rest[:i], rest[i+1:]
		} else {
			rest = ""
		}
		if !in.IsDir() {
			return nil, &fs.PathError{Op: op, Path: name, Err: ErrNotDir}
		}
		ino, err := f.lookupIn(in, elem)
		if err != nil {
			return nil, &fs.PathError{Op: op, Path: name, Err: err}
		}
		if ino == 0 {
			return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
		}
		in, err = f.Inode(ino)
		if err != nil {
			return nil, &fs.PathError{Op: op, Path: name, Err: err}
		}
	}
	return in, nil
}

// maxSymlink caps a symlink target (the kernel's XFS_SYMLINK_MAXLEN is 1024).
const maxSymlink = 1024

const symlinkMagic = 0x58534c4d // "XSLM"

// Readlink returns the target of symlink inode in: local (in the inode)
// or remote (in blocks with headers on v5).
func (f *FS) Readlink(in *Inode) (string, error) {
	if !in.IsSymlink() {
		return "", fmt.Errorf("xfs: inode %d is not a symbolic link", in.Ino)
	}
	if in.Size == 0 || in.Size > maxSymlink {
		return "", inoErr(in.Ino, in.off+56, "symlink of %d bytes", in.Size)
	}
	if in.Format == fmtLocal {
		return string(in.data[:in.Size]), nil
	}
	m, err := f.mapFork(in)
	if err != nil {
		return "", err
	}
	out := make([]byte, 0, in.Size)
	b := make([]byte, f.bs)
	for _, e := range m.ext {
		for k := uint64(0); k < e.Len && uint64(len(out)) < in.Size; k++ {
			off := int64(e.Physical+k) * f.bs
			if err := f.readAt(b, off); err != nil {
				return "", err
			}
			data := b
			if f.sb.CRC() {
				if be32(b, 0) != symlinkMagic || !crcOK(b, 12) || be64(b, 32) != in.Ino {
					return "", inoErr(in.Ino, off, "remote symlink block: bad magic, CRC or owner")
				}
				n := int(be32(b, 8))
				if n > len(b)-56 || be32(b, 4) != uint32(len(out)) {
					return "", inoErr(in.Ino, off, "remote symlink block: %d bytes at %d", n, be32(b, 4))
				}
				data = b[56 : 56+n]
			}
			take := min(uint64(len(data)), in.Size-uint64(len(out)))
			out = append(out, data[:take]...)
		}
	}
	if uint64(len(out)) != in.Size {
		return "", inoErr(in.Ino, in.off, "remote symlink holds %d of %d bytes", len(out), in.Size)
	}
	return string(out), nil
}
