package snapshot_test

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/klauspost/compress/snappy"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
)

// memImage is guest-physical memory built in a test: a few ranges with
// their bytes.
type memImage struct {
	ranges []vmi.Range
	data   [][]byte
}

func (m *memImage) Ranges() []vmi.Range { return m.ranges }

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		a := vmi.PA(off) + vmi.PA(n)
		i := sort.Search(len(m.ranges), func(i int) bool { return m.ranges[i].End() > a })
		if i == len(m.ranges) || a < m.ranges[i].Start {
			return n, &vmi.HoleError{Addr: a}
		}
		n += copy(p[n:], m.data[i][a-m.ranges[i].Start:])
	}
	return n, nil
}

const pg = 4096

// seedPages returns n pages of real kernel memory from the guest fixture
// when it is built, else pages of a deterministic pattern.
func seedPages(n int) [][]byte {
	pages := make([][]byte, n)
	src, _ := os.Open(filepath.Join(guesttest.Dir(), guesttest.NoKASLR, guesttest.ELFDump))
	for i := range pages {
		pages[i] = make([]byte, pg)
		if src != nil {
			// the ELF dump maps physical 0x1000000 (nokaslr _text) near this offset;
			// any page is fine: it only needs to look like memory.
			src.ReadAt(pages[i], 0x1000000+int64(i)*pg)
		} else {
			for j := range pages[i] {
				pages[i][j] = byte(i*7 + j/64 + j%3) // compressible
			}
		}
	}
	if src != nil {
		src.Close()
	}
	if n > 1 {
		clear(pages[1]) // a zero page
	}
	return pages
}

// smallImage is two ranges with a hole: [0, 3 pages) and [0x10000, +2 pages).
func smallImage() *memImage {
	p := seedPages(5)
	return &memImage{
		ranges: []vmi.Range{{Start: 0, Size: 3 * pg}, {Start: 0x10000, Size: 2 * pg}},
		data:   [][]byte{bytes.Join(p[:3], nil), bytes.Join(p[3:], nil)},
	}
}

var testCPU = vmi.CPU{
	RAX: 0x1111, RBX: 0x2222, RSP: 0xffffc90000013e98, RIP: 0xffffffff81a17a0b, RFLAGS: 0x246,
	CR0: 0x80050033, CR2: 0x5e22c0, CR3: 0x2734000, CR4: 0x6b0,
	CS:           vmi.Segment{Selector: 0x10, Limit: 0xffffffff, Flags: 0xaf9b00},
	GS:           vmi.Segment{Base: 0xffff88801f200000},
	KernelGSBase: 0x7f0000001000,
}

// notes builds the CORE NT_PRSTATUS and QEMU notes QEMU writes for one vCPU.
func notes(c vmi.CPU) []byte {
	var b bytes.Buffer
	note := func(name string, typ uint32, desc []byte) {
		binary.Write(&b, binary.LittleEndian, [3]uint32{uint32(len(name) + 1), uint32(len(desc)), typ})
		b.WriteString(name + "\x00")
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.Write(desc)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	pr := make([]byte, 336)
	regs := []uint64{c.R15, c.R14, c.R13, c.R12, c.RBP, c.RBX, c.R11, c.R10, c.R9, c.R8, c.RAX, c.RCX, c.RDX, c.RSI, c.RDI, 0, c.RIP, uint64(c.CS.Selector), c.RFLAGS, c.RSP, 0, c.FSBase, c.GS.Base, 0, 0, 0, 0}
	for i, v := range regs {
		binary.LittleEndian.PutUint64(pr[112+8*i:], v)
	}
	binary.LittleEndian.PutUint32(pr[32:], 1)
	note("CORE", 1, pr)
	q := make([]byte, 440)
	binary.LittleEndian.PutUint32(q, 1)
	binary.LittleEndian.PutUint32(q[4:], 440)
	gprs := []uint64{c.RAX, c.RBX, c.RCX, c.RDX, c.RSI, c.RDI, c.RSP, c.RBP, c.R8, c.R9, c.R10, c.R11, c.R12, c.R13, c.R14, c.R15, c.RIP, c.RFLAGS}
	for i, v := range gprs {
		binary.LittleEndian.PutUint64(q[8+8*i:], v)
	}
	for i, s := range []vmi.Segment{c.CS, c.DS, c.ES, c.FS, c.GS, c.SS, c.LDT, c.TR, c.GDT, c.IDT} {
		o := 152 + 24*i
		binary.LittleEndian.PutUint32(q[o:], uint32(s.Selector))
		binary.LittleEndian.PutUint32(q[o+4:], s.Limit)
		binary.LittleEndian.PutUint32(q[o+8:], s.Flags)
		binary.LittleEndian.PutUint64(q[o+16:], s.Base)
	}
	for i, v := range []uint64{c.CR0, 0, c.CR2, c.CR3, c.CR4} {
		binary.LittleEndian.PutUint64(q[392+8*i:], v)
	}
	binary.LittleEndian.PutUint64(q[432:], c.KernelGSBase)
	note("QEMU", 0, q)
	return b.Bytes()
}

// buildELF lays out an ELF core as QEMU does: header, program headers
// (PT_NOTE then one PT_LOAD per range), notes, memory.
func buildELF(m *memImage, c vmi.CPU) []byte {
	nt := notes(c)
	phnum := 1 + len(m.ranges)
	off := uint64(64 + 56*phnum)
	h := make([]byte, off)
	copy(h, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(h[16:], 4)
	le.PutUint16(h[18:], 62)
	le.PutUint32(h[20:], 1)
	le.PutUint64(h[32:], 64)
	le.PutUint16(h[52:], 64)
	le.PutUint16(h[54:], 56)
	le.PutUint16(h[56:], uint16(phnum))
	ph := func(i int, typ uint32, fileOff, paddr, size uint64) {
		p := h[64+56*i:]
		le.PutUint32(p, typ)
		le.PutUint64(p[8:], fileOff)
		le.PutUint64(p[24:], paddr)
		le.PutUint64(p[32:], size)
		le.PutUint64(p[40:], size)
	}
	ph(0, 4, off, 0, uint64(len(nt)))
	at := off + uint64(len(nt))
	for i, r := range m.ranges {
		ph(1+i, 1, at, uint64(r.Start), r.Size)
		at += r.Size
	}
	out := append(h, nt...)
	for i := range m.ranges {
		out = append(out, m.data[i]...)
	}
	return out
}

// Page compressions of buildKdump, chosen per page in turn.
const (
	kdRaw    = 0
	kdZlib   = 1
	kdLZO    = 2
	kdSnappy = 4
)

// buildKdump lays out a kdump-compressed file (header version 6, 4 KiB
// blocks) as QEMU does, compressing page i with comp[i%len(comp)].
func buildKdump(m *memImage, c vmi.CPU, comp []uint32) []byte {
	return buildKdumpWith(m, c, func(i int, page []byte) ([]byte, uint32) {
		var enc []byte
		flags := comp[i%len(comp)]
		switch flags {
		case kdZlib:
			var b bytes.Buffer
			w := zlib.NewWriter(&b)
			w.Write(page)
			w.Close()
			enc = b.Bytes()
		case kdSnappy:
			enc = snappy.Encode(nil, page)
		case kdLZO:
			enc = lzoEncode(page)
		default:
			enc = append([]byte(nil), page...)
		}
		if len(enc) >= pg { // as QEMU does: stored raw when compression does not pay
			enc, flags = append([]byte(nil), page...), kdRaw
		}
		return enc, flags
	})
}

// rangesOf is one range of n pages at guest-physical 0.
func rangesOf(n int) []vmi.Range { return []vmi.Range{{Start: 0, Size: uint64(n) * pg}} }

// buildKdumpWith lays out a kdump-compressed file whose page i holds the
// data and flags encode returns.
func buildKdumpWith(m *memImage, c vmi.CPU, encode func(i int, page []byte) ([]byte, uint32)) []byte {
	le := binary.LittleEndian
	last := m.ranges[len(m.ranges)-1]
	maxMapnr := uint64(last.End()) / pg
	half := (maxMapnr + 7) / 8
	halfBlocks := (half + pg - 1) / pg
	bitmapBlocks := 2 * halfBlocks
	hdr := make([]byte, (2+bitmapBlocks)*pg)
	copy(hdr, "KDUMP   ")
	le.PutUint32(hdr[8:], 6)
	le.PutUint32(hdr[428:], pg)
	le.PutUint32(hdr[432:], 1)
	le.PutUint32(hdr[436:], uint32(bitmapBlocks))
	le.PutUint32(hdr[440:], uint32(maxMapnr))
	le.PutUint32(hdr[460:], 1)
	sub := hdr[pg:]
	le.PutUint64(sub[96:], maxMapnr)
	bm1 := hdr[2*pg:]
	bm2 := hdr[(2+halfBlocks)*pg:]
	var pfns []uint64
	for _, r := range m.ranges {
		for a := r.Start; a < r.End(); a += pg {
			pfn := uint64(a) / pg
			bm1[pfn/8] |= 1 << (pfn % 8)
			bm2[pfn/8] |= 1 << (pfn % 8)
			pfns = append(pfns, pfn)
		}
	}
	descs := make([]byte, 24*len(pfns))
	dataOff := uint64(len(hdr) + len(descs))
	var data []byte
	page := make([]byte, pg)
	for i, pfn := range pfns {
		m.ReadAt(page, int64(pfn*pg))
		enc, flags := encode(i, page)
		le.PutUint64(descs[24*i:], dataOff+uint64(len(data)))
		le.PutUint32(descs[24*i+8:], uint32(len(enc)))
		le.PutUint32(descs[24*i+12:], flags)
		data = append(data, enc...)
	}
	nt := notes(c)
	le.PutUint64(sub[48:], dataOff+uint64(len(data)))
	le.PutUint64(sub[56:], uint64(len(nt)))
	out := append(hdr, descs...)
	out = append(out, data...)
	return append(out, nt...)
}

// flatten writes a kdump file in makedumpfile's flattened form, in records
// of at most chunk bytes, leaving out runs of zeros (gaps read as zeros).
func flatten(kd []byte, chunk int) []byte {
	out := make([]byte, 4096)
	copy(out, "makedumpfile")
	binary.BigEndian.PutUint64(out[16:], 1)
	binary.BigEndian.PutUint64(out[24:], 1)
	for off := 0; off < len(kd); off += chunk {
		b := kd[off:min(off+chunk, len(kd))]
		if !bytes.ContainsFunc(b, func(r rune) bool { return r != 0 }) {
			continue
		}
		out = binary.BigEndian.AppendUint64(out, uint64(off))
		out = binary.BigEndian.AppendUint64(out, uint64(len(b)))
		out = append(out, b...)
	}
	out = binary.BigEndian.AppendUint64(out, ^uint64(0))
	return binary.BigEndian.AppendUint64(out, ^uint64(0))
}

func TestLimits(t *testing.T) {
	if _, ok := vmi.PA(1<<64 - 4096).Add(4096); ok {
		t.Error("PA.Add does not report overflow")
	}
	if a, ok := vmi.VA(0xffff800000000000).Add(0x1000); !ok || a != 0xffff800000001000 {
		t.Errorf("VA.Add = %v %v", a, ok)
	}
	if !errors.Is(&vmi.HoleError{Addr: 1}, vmi.ErrNotPresent) {
		t.Error("HoleError does not wrap ErrNotPresent")
	}
}
