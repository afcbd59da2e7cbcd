package imgtest

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf16"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// Differencing VHD and VHDX images cannot be written by qemu-img (QEMU
// reads neither), so the tests write them here, from the specifications
// (Microsoft's VHD format specification 1.0 and MS-VHDX), with known
// content over a parent that qemu-img did write: the expected bytes are the
// parent's with Write's data laid over them, the expected allocation the
// ranges written. Nothing here reads with the packages under test.

// Write is a guest write into a differencing child: Len bytes of Fill at
// Off (sector aligned).
type Write struct {
	Off, Len int64
	Fill     byte
}

// Expect returns parent (the parent's guest bytes) with ws laid over it
// and the set of ranges ws cover.
func Expect(parent []byte, ws []Write) ([]byte, rangeset.Set) {
	out := append([]byte(nil), parent...)
	var s rangeset.Set
	for _, w := range ws {
		for i := w.Off; i < w.Off+w.Len; i++ {
			out[i] = w.Fill
		}
		s.Add(w.Off, w.Off+w.Len)
	}
	return out, s
}

func utf16le(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b
}

func utf16be(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		binary.BigEndian.PutUint16(b[2*i:], c)
	}
	return b
}

func vhdChecksum(b []byte, skip int) uint32 {
	var s uint32
	for i, c := range b {
		if i < skip || i >= skip+4 {
			s += uint32(c)
		}
	}
	return ^s
}

// VHDChild describes a differencing VHD to write.
type VHDChild struct {
	Parent   string            // path of the parent VHD (its footer is copied for the size and geometry)
	ParentID *[16]byte         // parent unique ID to record (nil: the parent's own)
	Locators map[string]string // platform code ("W2ru", "W2ku") -> path
	Writes   []Write           // sector-aligned writes
}

// WriteVHDChild writes a differencing VHD at path (2 MiB blocks).
func WriteVHDChild(t testing.TB, path string, c VHDChild) {
	t.Helper()
	pf, err := os.ReadFile(c.Parent)
	if err != nil {
		t.Fatal(err)
	}
	pfoot := pf[len(pf)-512:]
	if string(pfoot[:8]) != "conectix" {
		t.Fatalf("%s: no VHD footer", c.Parent)
	}
	be := binary.BigEndian
	size := int64(be.Uint64(pfoot[48:]))
	const bs = 2 << 20
	entries := (size + bs - 1) / bs
	batBytes := (entries*4 + 511) / 512 * 512
	footer := make([]byte, 512)
	copy(footer, "conectix")
	be.PutUint32(footer[8:], 2)
	be.PutUint32(footer[12:], 0x00010000)
	be.PutUint64(footer[16:], 512)
	copy(footer[28:], "win ")
	be.PutUint64(footer[40:], uint64(size))
	be.PutUint64(footer[48:], uint64(size))
	copy(footer[56:60], pfoot[56:60])
	be.PutUint32(footer[60:], 4)
	copy(footer[68:84], "vmscope-child-id")
	be.PutUint32(footer[64:], vhdChecksum(footer, 64))

	dyn := make([]byte, 1024)
	copy(dyn, "cxsparse")
	be.PutUint64(dyn[8:], ^uint64(0))
	be.PutUint64(dyn[16:], 1536)
	be.PutUint32(dyn[24:], 0x00010000)
	be.PutUint32(dyn[28:], uint32(entries))
	be.PutUint32(dyn[32:], bs)
	if c.ParentID != nil {
		copy(dyn[40:56], c.ParentID[:])
	} else {
		copy(dyn[40:56], pfoot[68:84])
	}
	copy(dyn[64:576], utf16be(filepath.Base(c.Parent)))
	img := make([]byte, 1536+batBytes)
	next := int64(len(img))
	i := 0
	for _, code := range []string{"W2ru", "W2ku"} {
		p, ok := c.Locators[code]
		if !ok {
			continue
		}
		data := utf16le(p)
		e := dyn[576+24*i:]
		copy(e, code)
		be.PutUint32(e[4:], 512)
		be.PutUint32(e[8:], uint32(len(data)))
		be.PutUint64(e[16:], uint64(next))
		loc := make([]byte, 512)
		copy(loc, data)
		img = append(img, loc...)
		next += 512
		i++
	}
	be.PutUint32(dyn[36:], vhdChecksum(dyn, 36))
	for j := range entries {
		be.PutUint32(img[1536+4*j:], 0xffffffff)
	}
	// Blocks in the order of their first write.
	blocks := map[int64]int64{} // block -> file offset of its bitmap
	for _, w := range c.Writes {
		if w.Off%512 != 0 || w.Len%512 != 0 {
			t.Fatalf("unaligned write %+v", w)
		}
		for off := w.Off; off < w.Off+w.Len; off += 512 {
			b := off / bs
			at, ok := blocks[b]
			if !ok {
				at = int64(len(img))
				blocks[b] = at
				be.PutUint32(img[1536+4*b:], uint32(at/512))
				img = append(img, make([]byte, 512+bs)...)
			}
			s := off % bs / 512
			img[at+s/8] |= 0x80 >> (s % 8)
			for k := range int64(512) {
				img[at+512+off%bs+k] = w.Fill
			}
		}
	}
	copy(img, footer)
	copy(img[512:], dyn)
	img = append(img, footer...)
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func putCRC(b []byte) {
	binary.LittleEndian.PutUint32(b[4:], 0)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b, castagnoli))
}

// guid returns the on-disk form of the textual GUID s.
func guid(t testing.TB, s string) [16]byte {
	var g [16]byte
	var a uint32
	var b, c uint16
	var d [8]byte
	if _, err := fmt.Sscanf(s, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", &a, &b, &c, &d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &d[7]); err != nil {
		t.Fatalf("guid %s: %v", s, err)
	}
	binary.LittleEndian.PutUint32(g[:], a)
	binary.LittleEndian.PutUint16(g[4:], b)
	binary.LittleEndian.PutUint16(g[6:], c)
	copy(g[8:], d[:])
	return g
}

// VHDXChild describes a differencing VHDX to write (2 MiB blocks, 512-byte
// logical sectors).
type VHDXChild struct {
	Size    int64             // virtual size
	Linkage string            // parent_linkage: the parent's data write GUID, "{...}"
	Keys    map[string]string // more locator keys (relative_path, absolute_win32_path)
	// Writes: a write covering a whole block makes it fully present,
	// another partially present (with the chunk's sector bitmap).
	Writes []Write
	// ZeroBlocks are blocks recorded as PAYLOAD_BLOCK_ZERO.
	ZeroBlocks []int64
	// LogGUID, when set, is written into the newer header (a log to replay).
	LogGUID bool
	// BadNewerCRC spoils the CRC of the newer header.
	BadNewerCRC bool
}

// VHDX layout of the child: headers, log at 1 MiB, metadata at 2 MiB, BAT
// at 3 MiB, the sector bitmap block at 4 MiB, payload blocks from 5 MiB.
const (
	mib      = 1 << 20
	vhdxBS   = 2 * mib
	VHDXData = 5 * mib // file offset of the first payload block
)

// WriteVHDXChild writes a differencing VHDX at path.
func WriteVHDXChild(t testing.TB, path string, c VHDXChild) {
	t.Helper()
	le := binary.LittleEndian
	img := make([]byte, VHDXData)
	copy(img, "vhdxfile")
	copy(img[8:], utf16le("vmscope test"))
	for i, at := range []int{64 << 10, 128 << 10} {
		h := img[at : at+4096]
		copy(h, "head")
		le.PutUint64(h[8:], uint64(i+1))
		copy(h[16:], "file-write-guid!")
		copy(h[32:], "data-write-guid!")
		if c.LogGUID && i == 1 {
			copy(h[48:], "log-guid-pending")
		}
		le.PutUint16(h[66:], 1)
		le.PutUint32(h[68:], mib)
		le.PutUint64(h[72:], mib)
		putCRC(h)
		if c.BadNewerCRC && i == 1 {
			h[100] ^= 0xff
		}
	}
	for _, at := range []int{192 << 10, 256 << 10} {
		r := img[at : at+64<<10]
		copy(r, "regi")
		le.PutUint32(r[8:], 2)
		bat := guid(t, "2DC27766-F623-4200-9D64-115E9BFD4A08")
		meta := guid(t, "8B7CA206-4790-4B9A-B8FE-575F050F886E")
		copy(r[16:], bat[:])
		le.PutUint64(r[32:], 3*mib)
		le.PutUint32(r[40:], mib)
		le.PutUint32(r[44:], 1)
		copy(r[48:], meta[:])
		le.PutUint64(r[64:], 2*mib)
		le.PutUint32(r[72:], mib)
		le.PutUint32(r[76:], 1)
		putCRC(r)
	}
	// Metadata.
	md := img[2*mib : 3*mib]
	copy(md, "metadata")
	items := []struct {
		id   string
		data []byte
	}{
		{"CAA16737-FA36-4D43-B3B6-33F0AA44E76B", le.AppendUint32(le.AppendUint32(nil, vhdxBS), 2)},
		{"2FA54224-CD1B-4876-B211-5DBED83BF4B8", le.AppendUint64(nil, uint64(c.Size))},
		{"BECA12AB-B2E6-4523-93EF-C309E000C746", []byte("virtual-disk-id!")},
		{"8141BF1D-A96F-4709-BA47-F233A8FAAB5F", le.AppendUint32(nil, 512)},
		{"CDA348C7-445D-4471-9CC9-E9885251C556", le.AppendUint32(nil, 4096)},
		{"A8D35F2D-B30B-454D-ABF7-D3D84834AB0C", locator(t, c)},
	}
	le.PutUint16(md[10:], uint16(len(items)))
	at := 64 << 10
	for i, it := range items {
		e := md[32+32*i:]
		g := guid(t, it.id)
		copy(e, g[:])
		le.PutUint32(e[16:], uint32(at))
		le.PutUint32(e[20:], uint32(len(it.data)))
		le.PutUint32(e[24:], 4|2) // required, virtual disk
		copy(md[at:], it.data)
		at += (len(it.data) + 4095) / 4096 * 4096
	}
	// BAT: one chunk (2048 blocks of 2 MiB) is enough for a test disk.
	const ratio = 2048
	blocks := (c.Size + vhdxBS - 1) / vhdxBS
	if blocks > ratio {
		t.Fatalf("VHDX child of %d bytes: the builder writes one chunk", c.Size)
	}
	setBAT := func(b int64, state uint64, off int64) {
		le.PutUint64(img[3*mib+8*b:], uint64(off/mib)<<20|state)
	}
	setBAT(ratio, 6, 4*mib) // the sector bitmap block of chunk 0
	full := map[int64]bool{}
	for _, w := range c.Writes {
		if w.Off%vhdxBS == 0 && w.Len == vhdxBS {
			full[w.Off/vhdxBS] = true
		}
	}
	placed := map[int64]int64{}
	for _, w := range c.Writes {
		if w.Off%512 != 0 || w.Len%512 != 0 {
			t.Fatalf("unaligned write %+v", w)
		}
		for off := w.Off; off < w.Off+w.Len; off += 512 {
			b := off / vhdxBS
			host, ok := placed[b]
			if !ok {
				host = int64(len(img))
				placed[b] = host
				img = append(img, make([]byte, vhdxBS)...)
				state := uint64(7)
				if full[b] {
					state = 6
				}
				setBAT(b, state, host)
			}
			s := off / 512
			img[4*mib+s/8] |= 1 << (s % 8)
			for k := range int64(512) {
				img[host+off%vhdxBS+k] = w.Fill
			}
		}
	}
	for _, b := range c.ZeroBlocks {
		setBAT(b, 2, 0)
	}
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
}

// locator builds the parent locator item.
func locator(t testing.TB, c VHDXChild) []byte {
	le := binary.LittleEndian
	keys := []string{"parent_linkage"}
	vals := []string{c.Linkage}
	for _, k := range []string{"relative_path", "absolute_win32_path", "volume_path"} {
		if v, ok := c.Keys[k]; ok {
			keys, vals = append(keys, k), append(vals, v)
		}
	}
	typ := guid(t, "B04AEFB7-D19E-4A81-B789-25B8E9445913")
	b := append([]byte(nil), typ[:]...)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, uint16(len(keys)))
	strs := 20 + 12*len(keys)
	var data []byte
	for i := range keys {
		k, v := utf16le(keys[i]), utf16le(vals[i])
		b = le.AppendUint32(b, uint32(strs+len(data)))
		b = le.AppendUint32(b, uint32(strs+len(data)+len(k)))
		b = le.AppendUint16(b, uint16(len(k)))
		b = le.AppendUint16(b, uint16(len(v)))
		data = append(append(data, k...), v...)
	}
	return append(b, data...)
}

// VHDXDataWriteGUID reads the data write GUID of the current header of
// the VHDX at path (the header with the higher sequence number), in the
// text form a parent locator's parent_linkage holds.
func VHDXDataWriteGUID(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h1, h2 := b[64<<10:68<<10], b[128<<10:132<<10]
	h := h1
	if binary.LittleEndian.Uint64(h2[8:]) > binary.LittleEndian.Uint64(h1[8:]) {
		h = h2
	}
	g := h[32:48]
	le := binary.LittleEndian
	return fmt.Sprintf("{%08x-%04x-%04x-%x-%x}", le.Uint32(g), le.Uint16(g[4:]), le.Uint16(g[6:]), g[8:10], g[10:])
}
