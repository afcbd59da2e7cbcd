package ntfs

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"
)

// File is one file's base MFT record with the attributes of all its
// records (attribute list resolved), and its streams assembled.
type File struct {
	Rec     *Record
	attrs   []Attr
	streams []*Stream // $DATA streams; "" is the unnamed one
	Ext     []uint64  // extension records
}

// Stream is one $DATA attribute (or another non-resident attribute) with
// its extents merged: its size and run list over every record.
type Stream struct {
	Name  string
	Type  uint32
	attr  Attr // the first extent (StartVCN 0): sizes and flags
	size  int64
	init  int64
	runs  []Run
	value []byte // resident value
}

// Size is the stream's length in bytes.
func (s *Stream) Size() int64 { return s.size }

// Runs returns the stream's runs (nil when resident).
func (s *Stream) Runs() []Run { return s.runs }

// Resident reports whether the stream's value lives in the MFT record.
func (s *Stream) Resident() bool { return s.attr.Resident }

// Compressed, Sparse and Encrypted report the attribute's flags.
func (s *Stream) Compressed() bool { return s.attr.Flags&flagCompressed != 0 }
func (s *Stream) Sparse() bool     { return s.attr.Flags&flagSparse != 0 }
func (s *Stream) Encrypted() bool  { return s.attr.Flags&flagEncrypted != 0 }

// file returns the assembled file of base record num.
func (f *FS) file(num uint64) (*File, error) {
	f.mu.Lock()
	if x, ok := f.cache[num]; ok {
		f.mu.Unlock()
		return x, nil
	}
	f.mu.Unlock()
	r, err := f.ReadRecord(num)
	if err != nil {
		return nil, err
	}
	if !r.InUse() {
		return nil, fmt.Errorf("%w: MFT record %d is not in use", ErrNotExist, num)
	}
	if r.Base != 0 {
		return nil, fmt.Errorf("%w: MFT record %d is an extension of record %d", ErrNotExist, num, r.Base)
	}
	x, err := f.buildFile(r)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	if len(f.cache) > 4096 {
		clear(f.cache)
	}
	f.cache[num] = x
	f.mu.Unlock()
	return x, nil
}

// File returns the assembled file of base MFT record num.
func (f *FS) File(num uint64) (*File, error) { return f.file(num) }

// buildFile gathers the attributes of base record r and of the extension
// records its attribute list names, and merges the extents of each
// non-resident attribute.
func (f *FS) buildFile(r *Record) (*File, error) {
	x := &File{Rec: r}
	what := fmt.Sprintf("MFT record %d", r.Num)
	var list *Attr
	for i := range r.Attrs {
		if r.Attrs[i].Type == attrList {
			list = &r.Attrs[i]
		}
	}
	x.attrs = append(x.attrs, r.Attrs...)
	if list != nil {
		val, err := f.attrValue(*list, maxAttrListSize)
		if err != nil {
			return nil, fmt.Errorf("%s: attribute list: %w", what, err)
		}
		seen := map[uint64]bool{r.Num: true}
		for p := 0; p+26 <= len(val); {
			rl := int(binary.LittleEndian.Uint16(val[p+4:]))
			if rl < 26 || p+rl > len(val) {
				return nil, corrupt(what, -1, "attribute list entry at %d of length %d (list of %d bytes)", p, rl, len(val))
			}
			ref := binary.LittleEndian.Uint64(val[p+16:]) & 0xFFFFFFFFFFFF
			p += rl
			if seen[ref] {
				continue
			}
			seen[ref] = true
			if len(x.Ext) >= maxExtRecords {
				return nil, corrupt(what, -1, "attribute list names more than %d records", maxExtRecords)
			}
			er, err := f.ReadRecord(ref)
			if err != nil {
				return nil, fmt.Errorf("%s: attribute list: %w", what, err)
			}
			if er.Base != r.Num || !er.InUse() {
				return nil, corrupt(what, -1, "attribute list names record %d, whose base is %d (in use %v)", ref, er.Base, er.InUse())
			}
			x.Ext = append(x.Ext, ref)
			x.attrs = append(x.attrs, er.Attrs...)
		}
	}
	// Streams: $DATA attributes by name, extents merged by StartVCN.
	type key struct {
		t uint32
		n string
	}
	groups := map[key][]Attr{}
	var order []key
	for _, a := range x.attrs {
		if a.Type != attrData && a.Type != attrIndexAlloc && a.Type != attrBitmap && !(a.Type == attrReparse || a.Type == attrList) {
			continue
		}
		k := key{a.Type, a.Name}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], a)
	}
	for _, k := range order {
		s, err := f.mergeExtents(groups[k], what)
		if err != nil {
			return nil, err
		}
		x.streams = append(x.streams, s)
	}
	return x, nil
}

// mergeExtents makes one stream of the extents of one attribute.
func (f *FS) mergeExtents(ext []Attr, what string) (*Stream, error) {
	sort.Slice(ext, func(i, j int) bool { return ext[i].StartVCN < ext[j].StartVCN })
	a := ext[0]
	s := &Stream{Name: a.Name, Type: a.Type, attr: a, size: a.DataSize, init: a.InitSize}
	if a.Resident {
		if len(ext) > 1 {
			return nil, corrupt(what, -1, "attribute %#x %q both resident and in %d extents", a.Type, a.Name, len(ext))
		}
		s.value = a.Value
		return s, nil
	}
	if a.StartVCN != 0 {
		return nil, corrupt(what, -1, "attribute %#x %q has no extent at VCN 0", a.Type, a.Name)
	}
	next := uint64(0)
	for _, e := range ext {
		if e.Resident || e.StartVCN != next {
			return nil, corrupt(what, -1, "attribute %#x %q: extent in record %d starts at VCN %d, want %d", a.Type, a.Name, e.Record, e.StartVCN, next)
		}
		s.runs = append(s.runs, e.Runs...)
		next = e.LastVCN + 1
	}
	if err := checkOverlap(s.runs); err != nil {
		return nil, corrupt(what, -1, "attribute %#x %q: %v", a.Type, a.Name, err)
	}
	if s.init > s.size {
		s.init = s.size
	}
	covered := int64(next) * f.ClusterSize
	if next > 0 && covered/f.ClusterSize != int64(next) || s.size > covered && !(len(ext) == 1 && len(a.Runs) == 0 && s.size == 0) {
		return nil, corrupt(what, -1, "attribute %#x %q of %d bytes mapped by %d clusters", a.Type, a.Name, s.size, next)
	}
	return s, nil
}

// attrValue reads the whole value of an attribute of at most limit bytes.
func (f *FS) attrValue(a Attr, limit int64) ([]byte, error) {
	if a.Resident {
		return a.Value, nil
	}
	if a.DataSize > limit {
		return nil, corrupt(fmt.Sprintf("MFT record %d", a.Record), -1, "attribute %#x of %d bytes (limit %d)", a.Type, a.DataSize, limit)
	}
	s := &Stream{Type: a.Type, attr: a, size: a.DataSize, init: min(a.InitSize, a.DataSize), runs: a.Runs}
	b := make([]byte, a.DataSize)
	if _, err := f.streamReader(s, 0).ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, err
	}
	return b, nil
}

func (x *File) stream(name string) *Stream {
	return x.streamOf(attrData, name)
}

func (x *File) streamOf(t uint32, name string) *Stream {
	for _, s := range x.streams {
		if s.Type == t && s.Name == name {
			return s
		}
	}
	return nil
}

// Streams returns the file's $DATA streams ("" the unnamed one first when
// it has one, then the named ones sorted).
func (x *File) Streams() []*Stream {
	var out []*Stream
	for _, s := range x.streams {
		if s.Type == attrData {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// AllStreams returns every non-resident-capable attribute assembled:
// $DATA streams, index allocations and bitmaps, reparse data, attribute
// lists.
func (x *File) AllStreams() []*Stream { return x.streams }

// FileName is a $FILE_NAME attribute.
type FileName struct {
	Parent    uint64
	ParentSeq uint16
	Name      string
	Namespace uint8 // 0 POSIX, 1 Win32, 2 DOS, 3 Win32 and DOS
	Flags     uint32
	Size      int64
	Times     Times
}

// Times are the four NTFS times.
type Times struct {
	Crtime, Mtime, Ctime, Atime time.Time // created, modified, MFT changed, accessed
}

// ntfsTime converts 100 ns intervals since 1601 to time.
func ntfsTime(v uint64) time.Time {
	const epoch = 116444736000000000
	if v < epoch {
		return time.Unix(0, 0).UTC().Add(-time.Duration((epoch-v)/10000000) * time.Second)
	}
	d := v - epoch
	return time.Unix(int64(d/10000000), int64(d%10000000)*100).UTC()
}

func readTimes(b []byte) Times {
	return Times{Crtime: ntfsTime(binary.LittleEndian.Uint64(b[0:])), Mtime: ntfsTime(binary.LittleEndian.Uint64(b[8:])),
		Ctime: ntfsTime(binary.LittleEndian.Uint64(b[16:])), Atime: ntfsTime(binary.LittleEndian.Uint64(b[24:]))}
}

func parseFileName(v []byte) (FileName, bool) {
	if len(v) < 66 {
		return FileName{}, false
	}
	n := int(v[64])
	if 66+2*n > len(v) {
		return FileName{}, false
	}
	ref := binary.LittleEndian.Uint64(v[0:])
	return FileName{Parent: ref & 0xFFFFFFFFFFFF, ParentSeq: uint16(ref >> 48), Times: readTimes(v[8:]),
		Size: int64(binary.LittleEndian.Uint64(v[48:])), Flags: binary.LittleEndian.Uint32(v[56:]),
		Namespace: v[65], Name: utf16String(v[66 : 66+2*n])}, true
}

// Names returns the file's $FILE_NAME attributes.
func (x *File) Names() []FileName {
	var out []FileName
	for _, a := range x.attrs {
		if a.Type == attrFileName && a.Resident {
			if fn, ok := parseFileName(a.Value); ok {
				out = append(out, fn)
			}
		}
	}
	return out
}

// StdInfo returns the $STANDARD_INFORMATION times and file attribute flags.
func (x *File) StdInfo() (Times, uint32, bool) {
	for _, a := range x.attrs {
		if a.Type == attrStandardInfo && a.Resident && len(a.Value) >= 36 {
			return readTimes(a.Value), binary.LittleEndian.Uint32(a.Value[32:]), true
		}
	}
	return Times{}, 0, false
}

// Reparse returns the reparse tag and data of the file, if it has one.
func (f *FS) Reparse(x *File) (uint32, []byte, bool) {
	for _, a := range x.attrs {
		if a.Type == attrReparse {
			v, err := f.attrValue(a, maxResident)
			if err != nil || len(v) < 8 {
				return 0, nil, true
			}
			return binary.LittleEndian.Uint32(v), v[8:], true
		}
	}
	return 0, nil, false
}

// streamReader returns a ReaderAt over stream s of record rec.
func (f *FS) streamReader(s *Stream, rec uint64) *streamReader {
	return &streamReader{f: f, s: s, rec: rec}
}

// streamReader reads a stream: resident bytes, or clusters through the
// run list (holes and the part past the initialized size read as zeros),
// decompressing LZNT1 compression units.
type streamReader struct {
	f   *FS
	s   *Stream
	rec uint64

	mu    sync.Mutex
	unit  int64 // cached decompressed unit, -1 none
	ubuf  []byte
	valid bool
}

func (r *streamReader) Size() int64 { return r.s.size }

func (r *streamReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("ntfs: negative offset")
	}
	if off >= r.s.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(len(p)) > r.s.size-off {
		p = p[:r.s.size-off]
	}
	var n int
	var err error
	switch {
	case r.s.attr.Resident:
		n = copy(p, r.s.value[off:])
	case r.s.Compressed() && r.s.attr.CompUnit != 0:
		n, err = r.readCompressed(p, off)
	default:
		n, err = r.readPlain(p, off)
	}
	if err == nil && n < want {
		err = io.EOF
	}
	return n, err
}

// findRun returns the index of the run holding vcn, or -1.
func (r *streamReader) findRun(vcn uint64) int {
	runs := r.s.runs
	i := sort.Search(len(runs), func(i int) bool { return runs[i].VCN+runs[i].Len > vcn })
	if i == len(runs) || runs[i].VCN > vcn {
		return -1
	}
	return i
}

func (r *streamReader) readPlain(p []byte, off int64) (int, error) {
	cs := r.f.ClusterSize
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		chunk := p[n:]
		if pos >= r.s.init {
			clear(chunk)
			return len(p), nil
		}
		if int64(len(chunk)) > r.s.init-pos {
			chunk = chunk[:r.s.init-pos]
		}
		vcn := uint64(pos / cs)
		i := r.findRun(vcn)
		if i < 0 {
			return n, corrupt(fmt.Sprintf("MFT record %d", r.rec), -1, "stream %q: VCN %d in no run", r.s.Name, vcn)
		}
		run := r.s.runs[i]
		end := int64(run.VCN+run.Len) * cs
		if int64(len(chunk)) > end-pos {
			chunk = chunk[:end-pos]
		}
		if run.Sparse {
			clear(chunk)
		} else {
			dOff := int64(run.LCN)*cs + pos - int64(run.VCN)*cs
			if k, err := r.f.dev.ReadAt(chunk, dOff); k < len(chunk) {
				return n + k, corrupt(fmt.Sprintf("MFT record %d", r.rec), dOff, "stream %q: %v", r.s.Name, errOr(err, io.ErrUnexpectedEOF))
			}
		}
		n += len(chunk)
	}
	return n, nil
}

func (r *streamReader) readCompressed(p []byte, off int64) (int, error) {
	cs := r.f.ClusterSize
	ucl := int64(1) << r.s.attr.CompUnit
	usize := ucl * cs
	if usize > 1<<20 {
		return 0, corrupt(fmt.Sprintf("MFT record %d", r.rec), -1, "stream %q: compression unit of %d bytes", r.s.Name, usize)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		u := pos / usize
		if !r.valid || r.unit != u {
			if err := r.loadUnit(u, ucl, usize); err != nil {
				return n, err
			}
		}
		k := copy(p[n:], r.ubuf[pos-u*usize:])
		n += k
	}
	return n, nil
}

// loadUnit reads compression unit u into ubuf: all clusters allocated
// means stored uncompressed, none means zeros, else LZNT1 data in the
// allocated clusters at its start.
func (r *streamReader) loadUnit(u, ucl, usize int64) error {
	cs := r.f.ClusterSize
	if r.ubuf == nil {
		r.ubuf = make([]byte, usize)
	}
	r.valid = false
	first := uint64(u * ucl)
	var alloc []byte
	var allocated int64
	for c := first; c < first+uint64(ucl); {
		i := r.findRun(c)
		if i < 0 {
			break // past the run list: the rest is a hole
		}
		run := r.s.runs[i]
		k := min(run.VCN+run.Len, first+uint64(ucl)) - c
		if !run.Sparse {
			buf := make([]byte, int64(k)*cs)
			dOff := int64(run.LCN+c-run.VCN) * cs
			if m, err := r.f.dev.ReadAt(buf, dOff); m < len(buf) {
				return corrupt(fmt.Sprintf("MFT record %d", r.rec), dOff, "stream %q: %v", r.s.Name, errOr(err, io.ErrUnexpectedEOF))
			}
			alloc = append(alloc, buf...)
			allocated += int64(k)
		}
		c += k
	}
	switch {
	case allocated == ucl:
		copy(r.ubuf, alloc)
	case allocated == 0:
		clear(r.ubuf)
	default:
		m, err := decompressLZNT1(r.ubuf, alloc)
		if err != nil {
			return corrupt(fmt.Sprintf("MFT record %d", r.rec), -1, "stream %q: compression unit %d: %v", r.s.Name, u, err)
		}
		clear(r.ubuf[m:])
	}
	// Past the initialized size reads as zeros.
	if end := r.s.init - u*usize; end < usize {
		clear(r.ubuf[max(end, 0):])
	}
	r.unit, r.valid = u, true
	return nil
}

// decompressLZNT1 decompresses LZNT1 chunks from src into dst and returns
// the bytes written. It never writes past dst nor reads past src.
func decompressLZNT1(dst, src []byte) (int, error) {
	out := 0
	for p := 0; p+2 <= len(src); {
		h := binary.LittleEndian.Uint16(src[p:])
		if h == 0 {
			break
		}
		clen := int(h&0x0FFF) + 1
		p += 2
		if p+clen > len(src) {
			return out, fmt.Errorf("LZNT1 chunk of %d bytes past the end of the unit", clen)
		}
		chunk := src[p : p+clen]
		p += clen
		if out >= len(dst) {
			return out, fmt.Errorf("LZNT1 data longer than the unit")
		}
		cdst := dst[out:min(out+4096, len(dst))]
		if h&0x8000 == 0 {
			k := copy(cdst, chunk)
			out += k
			continue
		}
		k, err := lznt1Chunk(cdst, chunk)
		if err != nil {
			return out, err
		}
		out += k
	}
	return out, nil
}

func lznt1Chunk(dst, src []byte) (int, error) {
	o := 0
	for i := 0; i < len(src); {
		flags := src[i]
		i++
		for bit := 0; bit < 8 && i < len(src); bit++ {
			if flags&(1<<bit) == 0 {
				if o >= len(dst) {
					return o, fmt.Errorf("LZNT1 literal past the chunk's 4096 bytes")
				}
				dst[o] = src[i]
				o++
				i++
				continue
			}
			if i+2 > len(src) {
				return o, fmt.Errorf("LZNT1 phrase token cut short")
			}
			t := int(binary.LittleEndian.Uint16(src[i:]))
			i += 2
			if o == 0 {
				return o, fmt.Errorf("LZNT1 back-reference at the start of a chunk")
			}
			lg := 0
			for x := o - 1; x >= 0x10; x >>= 1 {
				lg++
			}
			back := (t >> (12 - lg)) + 1
			length := (t & (0xFFF >> lg)) + 3
			if back > o {
				return o, fmt.Errorf("LZNT1 back-reference %d before the chunk start (at %d)", back, o)
			}
			if o+length > len(dst) {
				return o, fmt.Errorf("LZNT1 phrase past the chunk's 4096 bytes")
			}
			for j := 0; j < length; j++ {
				dst[o] = dst[o-back]
				o++
			}
		}
	}
	return o, nil
}
