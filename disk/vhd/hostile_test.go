package vhd_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/imgtest"
)

// TestHostile: a bad checksum, a bad block size, BAT entries past the
// file or overlapping another block, the BAT or the headers, and a
// truncated file give *disk.Error naming the structure; a raw disk whose
// last sector is "conectix" without a valid footer is not read as VHD.
func TestHostile(t *testing.T) {
	orig, err := os.ReadFile(imgtest.Path(t, "dynamic.vhd"))
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	dyn := int64(be.Uint64(orig[16:]))
	bat := int64(be.Uint64(orig[dyn+16:]))
	// fix recomputes the checksums of both footers and the dynamic header.
	fix := func(b []byte) []byte {
		be.PutUint32(b[64:], sum(b[:512], 64))
		copy(b[len(b)-512:], b[:512])
		be.PutUint32(b[dyn+36:], sum(b[dyn:dyn+1024], 36))
		return b
	}
	mut := func(at int64, v []byte, fixed bool) []byte {
		c := bytes.Clone(orig)
		copy(c[at:], v)
		if fixed {
			fix(c)
		}
		return c
	}
	first := be.Uint32(orig[bat:])
	for _, c := range []struct {
		name string
		img  []byte
		cat  error
		what string
	}{
		{"footer checksum", mut(40, []byte{0, 0, 0, 3}, false), disk.ErrCorrupt, "footer"},
		{"disk type", mut(60, []byte{0, 0, 0, 9}, true), disk.ErrUnsupported, "footer"},
		{"header checksum", mut(dyn+28, []byte{0, 0, 1, 0}, false), disk.ErrCorrupt, "dynamic header"},
		{"block size", mut(dyn+32, []byte{0, 0x20, 0, 1}, true), disk.ErrCorrupt, "block size"},
		{"BAT too small", mut(dyn+28, []byte{0, 0, 0, 1}, true), disk.ErrCorrupt, "max table entries"},
		{"BAT past the file", mut(dyn+16, be.AppendUint64(nil, 1<<40), true), disk.ErrCorrupt, "BAT"},
		{"block past the file", mut(bat, []byte{0x10, 0, 0, 0}, true), disk.ErrCorrupt, "BAT entry"},
		{"blocks overlap", mut(bat+4*20, be.AppendUint32(nil, first), true), disk.ErrCorrupt, "BAT entry"},
		{"block over the BAT", mut(bat, be.AppendUint32(nil, uint32(bat/512)), true), disk.ErrCorrupt, "BAT entry"},
		{"truncated", orig[:len(orig)/2], disk.ErrCorrupt, ""},
		{"dynamic header past the file", mut(16, be.AppendUint64(nil, 1<<40), true), disk.ErrCorrupt, "data offset"},
	} {
		t.Run(c.name, func(t *testing.T) {
			imgtest.CheckRefused(t, c.name, imgtest.Mem{"/m/x.vhd": c.img}, "/m/x.vhd", c.cat, c.what)
		})
	}
	// A raw disk whose last sector starts with the cookie but is no footer
	// is refused as an unknown VHD, never opened as a fixed disk.
	raw := make([]byte, 1<<20)
	copy(raw[len(raw)-512:], "conectix")
	if f, err := disk.Detect(bytes.NewReader(raw), int64(len(raw))); f == "vpc" || !errors.Is(err, disk.ErrUnsupported) {
		t.Fatalf("Detect of a bad footer: %q, %v", f, err)
	}
}
