package vhdx_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/imgtest"
)

// TestHostile: bad or missing headers and region tables, overlapping or
// out-of-file regions, BAT entries past the file or overlapping, bad
// states, bad metadata and a truncated file give *disk.Error naming the
// structure.
func TestHostile(t *testing.T) {
	orig, err := os.ReadFile(imgtest.Path(t, "dynamic.vhdx"))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	rt := orig[192<<10:]
	var batAt, metaAt int64
	var batEntry, metaEntry int64
	for i := range int64(le.Uint32(rt[8:])) {
		e := rt[16+32*i:]
		switch e[0] {
		case 0x66:
			batAt, batEntry = int64(le.Uint64(e[16:])), 192<<10+16+32*i
		case 0x06:
			metaAt, metaEntry = int64(le.Uint64(e[16:])), 192<<10+16+32*i
		}
	}
	firstPresent := int64(-1)
	for i := int64(0); i < 64; i++ {
		if le.Uint64(orig[batAt+8*i:])&7 == 6 {
			firstPresent = i
			break
		}
	}
	if batAt == 0 || metaAt == 0 || firstPresent < 0 {
		t.Fatal("fixture layout")
	}
	mut := func(fix bool, edits ...any) []byte {
		c := bytes.Clone(orig)
		for i := 0; i < len(edits); i += 2 {
			copy(c[edits[i].(int64):], edits[i+1].([]byte))
		}
		if fix {
			for _, r := range [][2]int{{64 << 10, 68 << 10}, {128 << 10, 132 << 10}, {192 << 10, 256 << 10}, {256 << 10, 320 << 10}} {
				fixCRC(c[r[0]:r[1]])
			}
		}
		return c
	}
	u64 := func(v uint64) []byte { return le.AppendUint64(nil, v) }
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	present := le.Uint64(orig[batAt+8*firstPresent:])
	for _, c := range []struct {
		name string
		img  []byte
		cat  error
		what string
	}{
		{"both headers bad", mut(false, int64(64<<10+100), []byte{1}, int64(128<<10+100), []byte{1}), disk.ErrCorrupt, "header"},
		{"header version", mut(true, int64(64<<10+66), []byte{2, 0}, int64(128<<10+66), []byte{2, 0}), disk.ErrCorrupt, "header"},
		{"log past the file", mut(true, int64(64<<10+72), u64(1<<40), int64(128<<10+72), u64(1<<40)), disk.ErrCorrupt, "header log"},
		{"region tables bad", mut(false, int64(192<<10+100), []byte{1}, int64(256<<10+100), []byte{1}), disk.ErrCorrupt, "region table"},
		{"region past the file", mut(true, batEntry+16, u64(1<<40), batEntry+16+64<<10, u64(1<<40)), disk.ErrCorrupt, "region table entry"},
		{"regions overlap", mut(true, batEntry+16, u64(uint64(metaAt)), batEntry+16+64<<10, u64(uint64(metaAt))), disk.ErrCorrupt, "region"},
		{"region over the headers", mut(true, metaEntry+16, u64(0), metaEntry+16+64<<10, u64(0)), disk.ErrCorrupt, "region table entry"},
		{"unknown required region", mut(true, batEntry, []byte{0x99}, batEntry+64<<10, []byte{0x99}, batEntry+28, u32(1), batEntry+28+64<<10, u32(1)), disk.ErrUnsupported, "region table entry"},
		{"metadata signature", mut(false, metaAt, []byte("metadatX")), disk.ErrCorrupt, "metadata table"},
		{"metadata entries", mut(false, metaAt+10, []byte{0xff, 0xff}), disk.ErrCorrupt, "metadata table"},
		{"metadata item past the region", mut(false, metaAt+32+16, u32(1<<30)), disk.ErrCorrupt, "metadata table entry"},
		{"block past the file", mut(false, batAt+8*firstPresent, u64(present&7|uint64(1<<40))), disk.ErrCorrupt, "BAT entry"},
		{"blocks overlap", mut(false, batAt+8*(firstPresent+1), u64(present)), disk.ErrCorrupt, "payload block"},
		{"block over the BAT", mut(false, batAt+8*firstPresent, u64(uint64(batAt)<<0|6)), disk.ErrCorrupt, ""},
		{"bad state", mut(false, batAt+8*firstPresent, u64(present&^7|5)), disk.ErrCorrupt, "BAT entry"},
		{"partially present without a parent", mut(false, batAt+8*firstPresent, u64(present&^7|7)), disk.ErrCorrupt, "BAT entry"},
		{"truncated", orig[:len(orig)/3], disk.ErrCorrupt, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			imgtest.CheckRefused(t, c.name, imgtest.Mem{"/m/x.vhdx": c.img}, "/m/x.vhdx", c.cat, c.what)
		})
	}
}
