package imgtest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/cow"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// CheckRefused opens the file top of m (a corrupted image) from memory,
// reads its guest view whole and its Allocated: one of these must fail
// with a *disk.Error of category cat whose structure names what. label
// names the case in failures.
func CheckRefused(t *testing.T, label string, m Mem, top string, cat error, what string) {
	t.Helper()
	im, err := m.Open(top)
	if err == nil {
		_, err = io.Copy(io.Discard, io.NewSectionReader(im, 0, im.Size()))
		if err == nil {
			_, err = im.Top().Allocated(context.Background())
		}
		im.Close()
	}
	if err == nil {
		t.Fatalf("%s: no error", label)
	}
	CheckError(t, label, err)
	var e *disk.Error
	errors.As(err, &e)
	if !errors.Is(err, cat) || !strings.Contains(e.What, what) {
		t.Fatalf("%s: %v; want %v naming %q", label, err, cat, what)
	}
}

// ParentCopy copies fixture name into dir as the file as (a parent that a
// test writes a differencing child next to) and returns its path and its
// guest bytes: those of ext4.img, which qemu-img compare found equal when
// the fixtures were made (TestConformance checks them again).
func ParentCopy(t *testing.T, name, dir, as string) (string, []byte) {
	t.Helper()
	b, err := os.ReadFile(Path(t, name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, as)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(Path(t, "ext4.img"))
	if err != nil {
		t.Fatal(err)
	}
	return p, raw
}

// CheckChild checks a differencing child opened as im over the parent at
// path parent: the chain is the child then the parent; the guest view
// equals want (the parent's bytes with the child's writes laid over), read
// whole and in 9000-byte reads at each of offs; the child's Allocated and
// the chain's copy-on-write dirty set equal wantAlloc. label names the
// case in failures.
func CheckChild(t *testing.T, im *disk.Image, parent string, want []byte, wantAlloc rangeset.Set, offs []int64, label any) {
	t.Helper()
	ls := im.Layers()
	if len(ls) != 2 || ls[1].Name() != parent {
		t.Fatalf("%v: chain %s", label, im)
	}
	got := make([]byte, im.Size())
	if n, err := im.ReadAt(got, 0); n != len(want) || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("%v: ReadAt = %d, %v", label, n, err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		t.Fatalf("%v: bytes differ at %d (%#x, want %#x) from the parent with the child's writes", label, i, got[i], want[i])
	}
	for _, off := range offs {
		p := make([]byte, 9000)
		if _, err := ls[0].ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if !bytes.Equal(p, want[off:min(off+9000, int64(len(want)))]) {
			t.Fatalf("%v: read at %d differs", label, off)
		}
	}
	alloc, err := ls[0].Allocated(context.Background())
	if err != nil || !rangeset.Equal(alloc, wantAlloc) {
		t.Fatalf("%v: Allocated %v, %v; want %v", label, alloc, err, wantAlloc)
	}
	d, err := cow.Dirty(context.Background(), im, 1)
	if err != nil || !rangeset.Equal(d, wantAlloc) {
		t.Fatalf("%v: cow.Dirty %v, %v; want %v", label, d, err, wantAlloc)
	}
}

// CheckChainError fails t unless err (opening a differencing child) is a
// categorized *disk.Error naming a structure, of category want.
func CheckChainError(t *testing.T, name string, im *disk.Image, err, want error) {
	t.Helper()
	if err == nil {
		im.Close()
		t.Fatalf("%s: opened", name)
	}
	CheckError(t, name, err)
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v is not %v", name, err, want)
	}
}
