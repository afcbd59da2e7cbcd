package luks

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/fsparse/luks/lukstest"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmerr"
)

func lvmFixture(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-lvm", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/lvm/build.sh, as root)", p)
	}
	return p
}

// TestAgainstLuksDump reads the headers cryptsetup luksFormat wrote (two
// keyslots each: luksAddKey) and compares them with luksDump's report.
func TestAgainstLuksDump(t *testing.T) {
	for _, c := range []struct{ img, dump, kind string }{
		{"luks1.img", "luks1.dump", "LUKS1"},
		{"luks2.img", "luks2.dump", "LUKS2"},
	} {
		t.Run(c.kind, func(t *testing.T) {
			want, err := lukstest.ParseFile(lvmFixture(t, c.dump))
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(lvmFixture(t, c.img))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fi, _ := f.Stat()
			h, err := Read(f, fi.Size())
			if err != nil {
				t.Fatal(err)
			}
			var slots []int
			for _, k := range h.Keyslots {
				slots = append(slots, k.Index)
				if k.KeyBits != want.KeyBits || k.KDF != "pbkdf2" || k.Iterations != 1000 {
					t.Errorf("keyslot %+v", k)
				}
			}
			got := lukstest.Dump{Version: h.Version, KeyBits: h.KeyBits, UUID: h.UUID, Label: h.Label, Cipher: h.CipherSpec(),
				Slots: slots, Payload: h.PayloadOffset, Epoch: h.Seqid, Hash: h.Hash}
			if h.Kind != c.kind || len(h.Problems) > 0 || fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
				t.Errorf("%s: read %s %+v\nluksDump %+v (problems %v)", c.img, h.Kind, got, want, h.Problems)
			}
			if len(slots) != 2 {
				t.Errorf("%d active keyslots, want 2", len(slots))
			}
		})
	}
}

// bitlocker builds a Windows 7+ BitLocker volume boot sector: the
// "-FVE-FS-" OEM id, the volume GUID at 160, the boot signature.
func bitlocker() []byte {
	b := make([]byte, 4096)
	copy(b, "\xeb\x58\x90-FVE-FS-")
	copy(b[160:], []byte{0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3, 0xd0, 0x01})
	b[510], b[511] = 0x55, 0xAA
	return b
}

func TestBitLocker(t *testing.T) {
	b := bitlocker()
	h, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil || h.Kind != "BitLocker" || h.Version != 2 {
		t.Fatalf("%+v %v", h, err)
	}
	b[511] = 0
	if _, err := Read(bytes.NewReader(b), int64(len(b))); !errors.Is(err, ErrCorrupt) || !errors.Is(err, vmerr.ErrCorrupt) {
		t.Errorf("no boot signature: %v", err)
	}
	if _, err := Read(bytes.NewReader(make([]byte, 4096)), 4096); !errors.Is(err, ErrNotEncrypted) {
		t.Errorf("zeros: %v", err)
	}
}

// luks2Image builds a LUKS2 header pair (16 KiB each) around json, with
// valid checksums, the primary with seqid seq1 and the secondary seq2.
func luks2Image(json string, seq1, seq2 uint64) []byte {
	const hs = 16 << 10
	img := make([]byte, 1<<20)
	for i, off := range []int{0, hs} {
		h := img[off : off+hs]
		if i == 0 {
			copy(h, luksMagic)
		} else {
			copy(h, luks2SecondMagic)
		}
		binary.BigEndian.PutUint16(h[6:], 2)
		binary.BigEndian.PutUint64(h[8:], hs)
		binary.BigEndian.PutUint64(h[16:], []uint64{seq1, seq2}[i])
		copy(h[72:], "sha256")
		copy(h[168:], "11111111-2222-3333-4444-555555555555")
		binary.BigEndian.PutUint64(h[256:], uint64(off))
		copy(h[4096:], json)
		sum := sha256.Sum256(h)
		copy(h[448:], sum[:])
	}
	return img
}

const luks2JSONSeed = `{"keyslots":{"0":{"type":"luks2","key_size":64,"kdf":{"type":"argon2id","time":4}},"3":{"type":"luks2","key_size":64,"kdf":{"type":"pbkdf2","iterations":1000}}},` +
	`"segments":{"0":{"type":"crypt","offset":"16777216","encryption":"aes-xts-plain64"}},"digests":{"0":{"hash":"sha256"}}}`

// TestLUKS2Headers: the valid header with the highest seqid wins; a bad
// checksum or a hostile JSON area is an error naming the offset.
func TestLUKS2Headers(t *testing.T) {
	img := luks2Image(luks2JSONSeed, 5, 5)
	h, err := Read(bytes.NewReader(img), int64(len(img)))
	if err != nil || h.Kind != "LUKS2" || h.Active() != 2 || h.Keyslots[1].Index != 3 || h.Keyslots[0].KDF != "argon2id" ||
		h.CipherSpec() != "aes-xts-plain64" || h.KeyBits != 512 || h.PayloadOffset != 16<<20 {
		t.Fatalf("%+v %v", h, err)
	}
	// The secondary is newer and has one keyslot.
	img2 := luks2Image(`{"keyslots":{"1":{"type":"luks2","key_size":32,"kdf":{"type":"pbkdf2"}}},"segments":{},"digests":{}}`, 5, 6)
	copy(img2[:16<<10], luks2Image(luks2JSONSeed, 5, 5)[:16<<10])
	if h, err := Read(bytes.NewReader(img2), int64(len(img2))); err != nil || h.Seqid != 6 || h.Active() != 1 || h.Keyslots[0].Index != 1 {
		t.Errorf("newer secondary: %+v %v", h, err)
	}
	// A corrupt primary checksum.
	bad := luks2Image(luks2JSONSeed, 5, 5)
	bad[5000] ^= 1
	_, err = Read(bytes.NewReader(bad), int64(len(bad)))
	var fe *vmerr.FormatError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &fe) || fe.Offset != 448 {
		t.Errorf("bad checksum: %v", err)
	}
	// Hostile JSON: too many keyslots, a bad offset, not JSON.
	var many strings.Builder
	many.WriteString(`{"keyslots":{`)
	for i := 0; i < 40; i++ {
		if i > 0 {
			many.WriteString(",")
		}
		many.WriteString(`"` + strconv.Itoa(i) + `":{}`)
	}
	many.WriteString(`}}`)
	for _, js := range []string{many.String(), `{"segments":{"0":{"type":"crypt","offset":"-5"}}}`, `{"keyslots":`, `{"keyslots":{"x":{}}}`} {
		img := luks2Image(js, 1, 1)
		if _, err := Read(bytes.NewReader(img), int64(len(img))); !errors.Is(err, ErrCorrupt) || !errors.As(err, &fe) || fe.Offset != 4096 {
			t.Errorf("json %.40q: %v", js, err)
		}
	}
	// A header size that is not allowed.
	img = luks2Image(luks2JSONSeed, 1, 1)
	binary.BigEndian.PutUint64(img[8:], 1<<40)
	if _, err := Read(bytes.NewReader(img), int64(len(img))); !errors.Is(err, ErrCorrupt) {
		t.Errorf("header size 1 TiB: %v", err)
	}
}

// FuzzRead: any bytes give a header or an error, never a panic; a header
// has at most the keyslots the format allows, in index order.
func FuzzRead(f *testing.F) {
	f.Add(luks2Image(luks2JSONSeed, 1, 2)[:40000])
	f.Add(bitlocker())
	l1 := make([]byte, 4096)
	copy(l1, luksMagic)
	binary.BigEndian.PutUint16(l1[6:], 1)
	copy(l1[8:], "aes")
	binary.BigEndian.PutUint32(l1[108:], 32)
	for i := 0; i < 8; i++ {
		binary.BigEndian.PutUint32(l1[208+48*i:], slotInactive)
	}
	binary.BigEndian.PutUint32(l1[208:], slotActive)
	f.Add(l1)
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 4; i++ {
		b := luks2Image(luks2JSONSeed, 1, 2)[:40000]
		b[rng.Intn(len(b))] ^= byte(rng.Intn(255) + 1)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Read(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if len(h.Keyslots) > maxKeyslots {
			t.Fatalf("%d keyslots", len(h.Keyslots))
		}
		for i := 1; i < len(h.Keyslots); i++ {
			if h.Keyslots[i].Index <= h.Keyslots[i-1].Index {
				t.Fatalf("keyslots out of order: %+v", h.Keyslots)
			}
		}
	})
}
