package vhd_test

import (
	"encoding/binary"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/imgtest"
)

func sum(b []byte, skip int) uint32 {
	var s uint32
	for i, c := range b {
		if i < skip || i >= skip+4 {
			s += uint32(c)
		}
	}
	return ^s
}

// FuzzVHD writes fuzzed bytes over a dynamic VHD qemu-img wrote (its
// footer copy, dynamic header, BAT, a block's bitmap, or anywhere), and,
// when fix is set, recomputes the footer and header checksums so the
// fuzzer gets past them; as a differencing disk too (the disk type turned
// to 4, so the parent locators and bitmaps are parsed). Open, ReadAt,
// Allocated and DataRanges must not panic; every error is a categorized
// *disk.Error naming a structure.
func FuzzVHD(f *testing.F) {
	f.Add(uint8(0), false, true, uint32(16), []byte{0, 0, 0, 0, 0, 0, 0x10, 0})
	f.Add(uint8(1), false, true, uint32(28), []byte{0xff, 0xff, 0xff, 0xff})
	f.Add(uint8(1), true, true, uint32(32), []byte{0, 0, 2, 1})
	f.Add(uint8(2), false, true, uint32(0), []byte{0, 0, 0, 1})
	f.Add(uint8(1), true, true, uint32(576), []byte("W2ru\x00\x00\x02\x00\x00\x00\x00\x10"))
	f.Add(uint8(4), false, false, uint32(300), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, target uint8, diff, fix bool, off uint32, data []byte) {
		img := imgtest.Seed(t, "seed.vhd")
		be := binary.BigEndian
		dyn := int64(be.Uint64(img[16:]))
		if dyn+1024 > int64(len(img)) {
			t.Fatal("seed: no dynamic header")
		}
		bat := int64(be.Uint64(img[dyn+16:]))
		var at int64
		switch target % 5 {
		case 0:
			at = int64(off % 512)
		case 1:
			at = dyn + int64(off%1024)
		case 2:
			at = bat + int64(off%512)
		case 3:
			at = int64(be.Uint32(img[bat:]))*512 + int64(off%1024)
		default:
			at = int64(off) % int64(len(img))
		}
		if at < 0 || at >= int64(len(img)) {
			return
		}
		copy(img[at:], data[:min(len(data), 4096)])
		if diff {
			be.PutUint32(img[60:], 4)
		}
		if fix {
			be.PutUint32(img[64:], sum(img[:512], 64))
			copy(img[len(img)-512:], img[:512])
			if dyn >= 0 && dyn+1024 <= int64(len(img)) {
				be.PutUint32(img[dyn+36:], sum(img[dyn:dyn+1024], 36))
			}
		}
		m := imgtest.Mem{"/m/seed.vhd": img, "/m/parent.vhd": imgtest.Seed(t, "seed.vhd")}
		imgtest.CheckImage(t, func() (*disk.Image, error) { return m.Open("/m/seed.vhd") })
	})
}
