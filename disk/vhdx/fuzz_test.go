package vhdx_test

import (
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/imgtest"
)

func fixCRC(b []byte) {
	binary.LittleEndian.PutUint32(b[4:], 0)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

// FuzzVHDX writes fuzzed bytes over a VHDX qemu-img wrote (a header, a
// region table, the metadata region, the BAT, or anywhere) and, when fix
// is set, recomputes the CRC-32C of both headers and region tables so the
// fuzzer gets past them. Open, ReadAt, Allocated and DataRanges must not
// panic; every error is a categorized *disk.Error naming a structure.
func FuzzVHDX(f *testing.F) {
	f.Add(uint8(0), true, uint32(8), []byte{9, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint8(0), true, uint32(48), []byte("log-guid-pending"))
	f.Add(uint8(1), true, uint32(8), []byte{0xff, 0xff, 0, 0})
	f.Add(uint8(1), true, uint32(24), []byte{0, 0, 0xf0, 0})
	f.Add(uint8(2), false, uint32(10), []byte{0xff, 0x07})
	f.Add(uint8(2), false, uint32(64<<10), []byte{0, 0, 0x20, 0, 2, 0, 0, 0})
	f.Add(uint8(3), false, uint32(0), []byte{6, 0, 0xf0, 0xff, 0, 0, 0, 0})
	f.Add(uint8(3), false, uint32(8), []byte{7, 0, 0x50, 0, 0, 0, 0, 0})
	f.Add(uint8(4), false, uint32(12345), []byte{1})
	f.Fuzz(func(t *testing.T, target uint8, fix bool, off uint32, data []byte) {
		img := imgtest.Seed(t, "seed.vhdx")
		le := binary.LittleEndian
		region := func(kind byte) int64 { // BAT: 0x66 (2DC27766), metadata: 0x06 (8B7CA206)
			rt := img[192<<10:]
			for i := range int(min(le.Uint32(rt[8:]), 16)) {
				if e := rt[16+32*i:]; e[0] == kind {
					return int64(le.Uint64(e[16:]))
				}
			}
			return -1
		}
		var at int64
		switch target % 5 {
		case 0:
			at = 64<<10 + int64(off%2)*(64<<10) + int64(off%4096)
		case 1:
			at = 192<<10 + int64(off%2)*(64<<10) + int64(off%512)
		case 2:
			at = region(0x06) + int64(off%(128<<10))
		case 3:
			at = region(0x66) + int64(off%4096)
		default:
			at = int64(off) % int64(len(img))
		}
		if at < 0 || at >= int64(len(img)) {
			return
		}
		copy(img[at:], data[:min(len(data), 4096)])
		if fix {
			fixCRC(img[64<<10 : 68<<10])
			fixCRC(img[128<<10 : 132<<10])
			fixCRC(img[192<<10 : 256<<10])
			fixCRC(img[256<<10 : 320<<10])
		}
		m := imgtest.Mem{"/m/seed.vhdx": img}
		imgtest.CheckImage(t, func() (*disk.Image, error) { return m.Open("/m/seed.vhdx") })
	})
}
