package main

// A bare LUKS file given as the image (cryptsetup luksFormat on a plain
// file, testdata/lvm/build.sh): info, ls and scan report the encrypted
// volume as they report a LUKS partition or LV, against what
// `cryptsetup luksDump` printed; dirty names the encrypted volumes it
// cannot map.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/fsparse/luks/lukstest"
)

func luksDump(t *testing.T, name string) lukstest.Dump {
	t.Helper()
	d, err := lukstest.ParseFile(lvmFixture(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBareLUKSImage(t *testing.T) {
	for _, c := range []struct{ img, dump string }{{"luks1.img", "luks1.dump"}, {"luks2.img", "luks2.dump"}} {
		t.Run(c.img, func(t *testing.T) {
			img := lvmFixture(t, c.img)
			want := luksDump(t, c.dump)
			stdout, stderr, code := vmscope(t, "info", "--format", "json", img)
			var doc struct {
				Format    string
				Encrypted []struct {
					ID     string
					Offset int64
					Size   int64
					Header struct {
						Kind, UUID, Label string
						Version           int
						KeyBits           int `json:"key_bits"`
						Keyslots          []struct{ Index int }
					}
				}
				Filesystems []json.RawMessage
			}
			if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
				t.Fatalf("info: %v (exit %d): %s", err, code, stderr)
			}
			if code != 2 || !strings.Contains(stderr, "encrypted, not scanned") {
				t.Errorf("info: exit %d (want 2: the encrypted volume is a problem): %s", code, stderr)
			}
			fi, err := os.Stat(img)
			if err != nil {
				t.Fatal(err)
			}
			if doc.Format != "raw" || len(doc.Filesystems) != 0 || len(doc.Encrypted) != 1 {
				t.Fatalf("info: format %q, %d filesystems, encrypted %+v", doc.Format, len(doc.Filesystems), doc.Encrypted)
			}
			e := doc.Encrypted[0]
			var slots []int
			for _, k := range e.Header.Keyslots {
				slots = append(slots, k.Index)
			}
			got := fmt.Sprintf("%s %d %s %s %d %v", e.ID, e.Header.Version, e.Header.UUID, e.Header.Label, e.Header.KeyBits, slots)
			wantS := fmt.Sprintf("disk %d %s %s %d %v", want.Version, want.UUID, want.Label, want.KeyBits, want.Slots)
			if got != wantS || e.Header.Kind != fmt.Sprintf("LUKS%d", want.Version) || e.Offset != 0 || e.Size != fi.Size() {
				t.Errorf("info: %s %s at %d (%d bytes)\nluksDump: %s", e.Header.Kind, got, e.Offset, e.Size, wantS)
			}
			// The table shows the cipher as luksDump spells it.
			stdout, _, _ = vmscope(t, "info", img)
			if !strings.Contains(stdout, "encrypted volumes (not scanned)") || !strings.Contains(stdout, want.Cipher) || !strings.Contains(stdout, want.UUID) {
				t.Errorf("info table lacks the volume (%s %s):\n%s", want.UUID, want.Cipher, stdout)
			}

			stdout, stderr, code = vmscope(t, "ls", "-r", img)
			if code != 2 || stdout != "" || !strings.Contains(stderr, "vmscope: disk at offset 0: LUKS") ||
				!strings.Contains(stderr, want.UUID) || !strings.Contains(stderr, "encrypted, not scanned") {
				t.Errorf("ls: exit %d, stdout %q, stderr %s", code, stdout, stderr)
			}

			rules := filepath.Join(t.TempDir(), "any.yar")
			os.WriteFile(rules, []byte(`rule Any { strings: $m = "LUKS" condition: $m }`+"\n"), 0o644)
			stdout, stderr, code = vmscope(t, "scan", "--format", "json", "--progress", "never", "--rules-cache", "off", "--rules", rules, img)
			var r struct {
				Findings []json.RawMessage
				Errors   []struct{ Error string }
				Summary  struct{ Files, Errors int }
			}
			if err := json.Unmarshal([]byte(stdout), &r); err != nil {
				t.Fatalf("scan: %v (exit %d): %s", err, code, stderr)
			}
			if code != 2 || len(r.Findings) != 0 || r.Summary.Files != 0 || r.Summary.Errors != 1 || len(r.Errors) != 1 ||
				!strings.HasSuffix(r.Errors[0].Error, "encrypted, not scanned") || !strings.Contains(r.Errors[0].Error, want.UUID) {
				t.Errorf("scan: exit %d, %+v", code, r)
			}
		})
	}
}

// TestBareBitLockerImage: a BitLocker volume given as the image (its boot
// sector built here: the "-FVE-FS-" OEM id, the boot signature, and a
// partition entry that must not be taken for an MBR) is the encrypted
// volume of the whole disk.
func TestBareBitLockerImage(t *testing.T) {
	b := make([]byte, 1<<20)
	copy(b, "\xeb\x58\x90-FVE-FS-")
	copy(b[446:], []byte{0x80, 1, 1, 0, 7, 0xfe, 0xff, 0xff, 0x3f, 0, 0, 0, 0x10, 0, 0, 0})
	b[510], b[511] = 0x55, 0xAA
	img := filepath.Join(t.TempDir(), "bitlocker.img")
	if err := os.WriteFile(img, b, 0o444); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := vmscope(t, "info", "--format", "json", img)
	var doc struct {
		Table     string `json:"partition_table"`
		Encrypted []struct {
			ID     string
			Header struct{ Kind string }
		}
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatalf("info: %v (exit %d): %s", err, code, stderr)
	}
	if code != 2 || doc.Table != "none" || len(doc.Encrypted) != 1 || doc.Encrypted[0].ID != "disk" || doc.Encrypted[0].Header.Kind != "BitLocker" ||
		!strings.Contains(stderr, "BitLocker: encrypted, not scanned") {
		t.Errorf("info: exit %d, %+v: %s", code, doc, stderr)
	}
}

// TestDirtyNamesEncrypted: dirty lists the changed files of the readable
// volumes and names every encrypted one (exit 2), with and without --state;
// with --state the poll is still saved (no later poll could read the
// volume either).
func TestDirtyNamesEncrypted(t *testing.T) {
	d1, d2 := luksDump(t, "luks1.dump"), luksDump(t, "luks2.dump")
	stdout, stderr, code := vmscope(t, "dirty", "--format", "json", lvmFixture(t, "lvm-overlay.qcow2"))
	var r struct{ Changes []json.RawMessage }
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("%v (exit %d): %s", err, code, stderr)
	}
	if code != 2 || len(r.Changes) == 0 || !strings.Contains(stderr, "vmscope: 2 problems") ||
		!strings.Contains(stderr, "vmscope: p3 at offset") || !strings.Contains(stderr, "vmscope: vg0/vault at offset") ||
		!strings.Contains(stderr, d1.UUID) || !strings.Contains(stderr, d2.UUID) || strings.Count(stderr, "encrypted, not scanned") != 3 {
		t.Errorf("dirty overlay: exit %d, %d changes, stderr:\n%s", code, len(r.Changes), stderr)
	}
	st := filepath.Join(t.TempDir(), "state")
	for poll := 1; poll <= 2; poll++ {
		stdout, stderr, code = vmscope(t, "dirty", "--state", st, "--source", "hash", "--format", "ndjson", lvmFixture(t, "luks2.img"))
		if code != 2 || stdout != "" || !strings.Contains(stderr, "vmscope: disk at offset 0: LUKS2 "+d2.UUID) ||
			strings.Contains(stderr, "poll state not updated") {
			t.Errorf("dirty --state, poll %d: exit %d, stdout %q, stderr:\n%s", poll, code, stdout, stderr)
		}
	}
}
