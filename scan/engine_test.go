package scan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
)

// countReader counts the bytes read through it.
type countReader struct {
	r     io.ReaderAt
	bytes atomic.Int64
	calls atomic.Int64
}

func (c *countReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.bytes.Add(int64(n))
	c.calls.Add(1)
	return n, err
}

// manyDataRules is n rules whose conditions read the file's data, as
// thousands of public rules do (uint16(0) == 0x5a4d and ...).
func manyDataRules(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "rule mz%d { condition: uint16(0) == 0x5a4d and uint32(%d) == 0x%08x }\n", i, 4*(i%8), i)
	}
	b.WriteString("rule hit { condition: uint16(0) == 0x5a4d and uint8(5) == 0x4b }\n")
	return b.String()
}

// Rules whose conditions read data (uint16(0)...) make libyara fetch the
// block again for each read; with 2,000 such rules a file must still be
// read about once, not once per rule (the system time of a large rule set
// was the image being read again for each rule).
func TestReadsIndependentOfRuleCount(t *testing.T) {
	r := mustRules(t, manyDataRules(2000))
	small := append([]byte("MZ\x00\x00\x00K"), bytes.Repeat([]byte{0xcc}, 20000)...)
	big := append([]byte("MZ\x00\x00\x00K"), bytes.Repeat([]byte{0xcc}, 300<<10)...)
	for _, tc := range []struct {
		name string
		data []byte
		max  int64 // bytes read at most
		opts []Option
	}{
		{"whole", small, int64(len(small)), nil},
		{"whole-64k-blocks", small, int64(len(small)), []Option{WithBlockSize(64 << 10), WithOverlap(4096)}},
		// Block path: the first pass (6 blocks, 5 overlaps), then block
		// 0 once more for the conditions (it stays in go-yara's buffer
		// for the other rules).
		{"blocks", big, int64(len(big)) + 5*4096 + 64<<10, []Option{WithBlockSize(64 << 10), WithOverlap(4096)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cr := &countReader{r: bytes.NewReader(tc.data)}
			res := scanFiles(t, r, []File{{Path: "/x.exe", Size: int64(len(tc.data)), Data: cr}}, append(tc.opts, WithJobs(1), WithHash(true))...)
			if len(res.Findings) != 1 || res.Findings[0].Rule != "hit" || len(res.Errors) != 0 {
				t.Fatalf("findings %+v errors %v", res.Findings, res.Errors)
			}
			if got := cr.bytes.Load(); got < int64(len(tc.data)) || got > tc.max {
				t.Errorf("read %d bytes in %d reads for a %d-byte file with %d rules, want at most %d", got, cr.calls.Load(), len(tc.data), r.Count(), tc.max)
			}
		})
	}
}

func TestImportedModules(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want string
	}{
		{`rule a { condition: true }`, "[]"},
		{`import "hash"
import "pe"
import "math"
rule a { condition: pe.number_of_sections > 0 or math.entropy(0, filesize) > 7 or hash.md5(0, 1) == "" }`, "[hash math pe]"},
		{`import "elf" rule a { condition: elf.type == elf.ET_EXEC }`, "[elf]"},
	} {
		r := mustRules(t, tc.src)
		got, err := importedModules(r)
		if err != nil || fmt.Sprint(got) != tc.want {
			t.Errorf("%q: modules %v, %v; want %s", tc.src, got, err, tc.want)
		}
	}
}

// math.count(byte) (the whole-data form) is undefined over overlapping
// blocks: with math imported, a file up to the module max size is scanned
// whole and matches as `yara FILE` does; a bigger one is scanned in blocks
// and listed in ModulePrefix.
func TestModuleWholeFile(t *testing.T) {
	r := mustRules(t, `import "math"
rule count_a { condition: math.count(0x41) == 3 }
rule plain { strings: $a = "AAA" condition: $a }`)
	data := bytes.Repeat([]byte{'z'}, 200<<10)
	copy(data[150<<10:], "AAA")
	small := []byte("xxAAAxx")
	files := []File{
		{Partition: "p1", Path: "/big", Ino: 12, Size: int64(len(data)), Data: bytes.NewReader(data)},
		{Partition: "p1", Path: "/small", Ino: 13, Size: int64(len(small)), Data: bytes.NewReader(small)},
	}
	blocks := []Option{WithBlockSize(64 << 10), WithOverlap(4096), WithJobs(2)}
	for _, tc := range []struct {
		moduleMax int64
		want      string
		prefix    string
	}{
		{DefaultModuleMaxSize, "[/big count_a /big plain /small count_a /small plain]", "[]"},
		{200 << 10, "[/big count_a /big plain /small count_a /small plain]", "[]"},
		{200<<10 - 1, "[/big plain /small count_a /small plain]", "[{p1 /big 12 204800 [math] 65536}]"},
		{0, "[/big plain /small count_a /small plain]", "[{p1 /big 12 204800 [math] 65536}]"},
	} {
		res := scanFiles(t, r, files, append(blocks, WithModuleMaxSize(tc.moduleMax))...)
		if got := fmt.Sprint(scanPairs(res)); got != tc.want || len(res.Errors) != 0 {
			t.Errorf("module max %d: findings %s, want %s (errors %v)", tc.moduleMax, got, tc.want, res.Errors)
		}
		if got := fmt.Sprint(res.ModulePrefix); got != tc.prefix {
			t.Errorf("module max %d: module prefix %s, want %s", tc.moduleMax, got, tc.prefix)
		}
	}
	// Without a module that needs whole files nothing is listed.
	r2 := mustRules(t, `import "hash" rule h { condition: hash.md5(0, filesize) != "" }`)
	res := scanFiles(t, r2, files, append(blocks, WithModuleMaxSize(0))...)
	if len(res.ModulePrefix) != 0 || len(res.Findings) != 2 {
		t.Errorf("hash only: module prefix %v, findings %v", res.ModulePrefix, scanPairs(res))
	}
	if _, err := Scan(context.Background(), r, nil, WithModuleMaxSize(-1)); !errors.Is(err, ErrOption) {
		t.Errorf("module max -1: %v", err)
	}
}
