package vmdk_test

import (
	"encoding/binary"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/imgtest"
)

var sparseSeeds = []string{"seed.vmdk", "seed-stream.vmdk"}

// FuzzSparse writes fuzzed bytes over a hosted sparse VMDK (monolithic or
// stream-optimized; qemu-img wrote both): into its header, its footer,
// its embedded descriptor, its grain directory or a grain table, or
// anywhere. Open, ReadAt, Allocated and DataRanges must not panic, and
// every error must be a categorized *disk.Error naming a structure.
func FuzzSparse(f *testing.F) {
	for i := range sparseSeeds {
		f.Add(uint8(i), uint8(0), uint32(0), []byte("KDMV\x04"))
		f.Add(uint8(i), uint8(0), uint32(12), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
		f.Add(uint8(i), uint8(0), uint32(44), []byte{0, 0, 1, 0})
		f.Add(uint8(i), uint8(1), uint32(0), []byte{0xff, 0xff, 0xff, 0x00})
		f.Add(uint8(i), uint8(2), uint32(4), []byte{1, 0, 0, 0})
		f.Add(uint8(i), uint8(3), uint32(0), []byte("parentCID=12345678\nparentFileNameHint=\"seed.vmdk\"\n"))
		f.Add(uint8(i), uint8(4), uint32(1000), []byte{0xde, 0xad})
	}
	f.Fuzz(func(t *testing.T, seed, target uint8, off uint32, data []byte) {
		img := imgtest.Seed(t, sparseSeeds[int(seed)%len(sparseSeeds)])
		le := binary.LittleEndian
		hdr := img[:512]
		if le.Uint64(hdr[56:]) == ^uint64(0) && len(img) >= 1536 { // stream: the footer's header
			hdr = img[len(img)-1024 : len(img)-512]
		}
		var at int64
		switch target % 5 {
		case 0: // the header in use
			at = int64(off % 512)
			if &hdr[0] != &img[0] {
				at += int64(len(img)) - 1024
			}
		case 1: // the grain directory
			at = int64(le.Uint64(hdr[56:]))*512 + int64(off%4096)
		case 2: // the first grain table
			gd := int64(le.Uint64(hdr[56:])) * 512
			if gd+4 <= int64(len(img)) {
				at = int64(le.Uint32(img[gd:]))*512 + int64(off%2048)
			}
		case 3: // the embedded descriptor
			at = int64(le.Uint64(img[28:]))*512 + int64(off%1024)
		default:
			at = int64(off) % int64(len(img))
		}
		if at < 0 || at >= int64(len(img)) {
			return
		}
		copy(img[at:], data[:min(len(data), 4096)])
		m := imgtest.Mem{"/m/seed.vmdk": img}
		imgtest.CheckImage(t, func() (*disk.Image, error) { return m.Open("/m/seed.vmdk") })
	})
}

// FuzzDescriptor opens a fuzzed descriptor whose extents may name a flat
// file, a hosted sparse file, itself or nothing: bounded parsing, no
// panic, categorized errors naming a structure.
func FuzzDescriptor(f *testing.F) {
	f.Add(string(imgtest.Seed(f, "seed-flat.vmdk")))
	f.Add("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"seed-flat-flat.vmdk\" 0\nRW 100 ZERO\nRW 4096 SPARSE \"seed.vmdk\"\n")
	f.Add("# Disk DescriptorFile\nCID=2\nparentCID=ffffffff\nRW 4096 SPARSE \"d.vmdk\"\n")
	f.Add("# Disk DescriptorFile\nCID=3\nparentCID=00000001\nparentFileNameHint=\"d.vmdk\"\nRW 4096 FLAT \"seed-flat-flat.vmdk\" 1\n")
	f.Add("# Disk DescriptorFile\nCID=3\nRW 9999999999999999999 FLAT \"x\" -1\nRDONLY 1 VMFSSPARSE \"seed.vmdk\"\n")
	f.Fuzz(func(t *testing.T, text string) {
		if len(text) > 64<<10 {
			return
		}
		m := imgtest.Mem{
			"/m/d.vmdk":              []byte(text),
			"/m/seed-flat-flat.vmdk": imgtest.Seed(t, "seed-flat-flat.vmdk"),
			"/m/seed.vmdk":           imgtest.Seed(t, "seed.vmdk"),
			"/m/seed-stream.vmdk":    imgtest.Seed(t, "seed-stream.vmdk"),
		}
		imgtest.CheckImage(t, func() (*disk.Image, error) { return m.Open("/m/d.vmdk") })
	})
}
