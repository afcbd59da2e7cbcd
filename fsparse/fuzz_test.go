package fsparse

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// fuzzDisk is a small real disk made by sfdisk (GPT or MBR with an extended
// partition) whose first sectors the fuzzer overwrites.
func seedDisks(f *testing.F) {
	for _, name := range []string{"gpt.img", "mbr.img"} {
		p := filepath.Join(fixture.Dir(), name)
		fh, err := os.Open(p)
		if err != nil {
			continue
		}
		b := make([]byte, 64<<10)
		io.ReadFull(fh, b)
		fh.Close()
		f.Add(b[:34*512])
	}
	// A whole-disk LVM PV (testdata/lvm/build.sh): label, PV header,
	// metadata area and text lie in its first MiB.
	if fh, err := os.Open(filepath.Join(fixture.Root(), "testdata", "out-lvm", "lvm-whole.img")); err == nil {
		b := make([]byte, 1<<20)
		io.ReadFull(fh, b)
		fh.Close()
		f.Add(b)
	}
	// An MBR with an extended partition and two logical ones, built here.
	mbr := make([]byte, 8<<10)
	entry := func(b []byte, typ byte, start, size uint32) {
		b[4] = typ
		putLE32(b[8:], start)
		putLE32(b[12:], size)
	}
	entry(mbr[446:], 0x05, 2, 12)
	mbr[510], mbr[511] = 0x55, 0xAA
	ebr := mbr[2*512:]
	entry(ebr[446:], 0x83, 1, 2)
	entry(ebr[462:], 0x05, 4, 8)
	ebr[510], ebr[511] = 0x55, 0xAA
	ebr2 := mbr[6*512:]
	entry(ebr2[446:], 0x83, 1, 3)
	ebr2[510], ebr2[511] = 0x55, 0xAA
	f.Add(mbr)
}

func putLE32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// FuzzOpen: partition-table and filesystem probing on hostile first
// sectors of a 64 MiB disk. It must not panic; partitions must lie inside
// the disk; errors carry this package's sentinels or a parser's error.
func FuzzOpen(f *testing.F) {
	seedDisks(f)
	f.Fuzz(func(t *testing.T, head []byte) {
		if len(head) > 1<<20 {
			return
		}
		const size = 64 << 20
		d, err := Open(sparseDisk{head: head, size: size}, size)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("uncategorised error: %v", err)
			}
			return
		}
		if len(d.Partitions) > maxGPTEntries+4+maxLogicalParts {
			t.Fatalf("%d partitions", len(d.Partitions))
		}
		for _, p := range d.Partitions {
			if p.Start < 0 || p.Size <= 0 || p.Start+p.Size > size {
				t.Fatalf("partition %+v outside the disk", p)
			}
		}
		for _, v := range d.Volumes {
			n := 0
			v.Walk(context.Background(), ".", func(e Entry, err error) error {
				if n++; n > 10000 {
					return errors.New("stop")
				}
				return nil
			})
		}
	})
}

// sparseDisk is head followed by zeros up to size.
type sparseDisk struct {
	head []byte
	size int64
}

func (s sparseDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off+int64(n) < s.size {
		pos := off + int64(n)
		if pos < int64(len(s.head)) {
			n += copy(p[n:], s.head[pos:])
			continue
		}
		m := min(int64(len(p)-n), s.size-pos)
		clear(p[n : n+int(m)])
		n += int(m)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestSparseDisk(t *testing.T) {
	d := sparseDisk{head: []byte("abc"), size: 6}
	b := make([]byte, 6)
	if n, _ := d.ReadAt(b, 0); n != 6 || !bytes.Equal(b, []byte("abc\x00\x00\x00")) {
		t.Fatalf("%d %q", n, b)
	}
}
