package scan

import (
	"bytes"
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
