package scan

import (
	"bytes"
	"context"
	"fmt"
	"testing"
)

// BenchmarkScan scans 2000 small files (4 KiB) and 4 big ones (32 MiB),
// in memory, with the default rules; it reports MB/s of file data.
func BenchmarkScan(b *testing.B) {
	r, err := DefaultRules()
	if err != nil {
		b.Fatal(err)
	}
	text := bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog; echo $HOME > /tmp/x\n"), 1<<19)
	var files []File
	var total int64
	for i := 0; i < 2000; i++ {
		d := text[i*16 : i*16+4096]
		files = append(files, File{Path: fmt.Sprintf("/usr/share/doc/f%d.txt", i), Size: int64(len(d)), Data: bytes.NewReader(d)})
		total += int64(len(d))
	}
	for i := 0; i < 4; i++ {
		d := text[:32<<20]
		files = append(files, File{Path: fmt.Sprintf("/var/big%d", i), Size: int64(len(d)), Data: bytes.NewReader(d)})
		total += int64(len(d))
	}
	for _, hash := range []bool{false, true} {
		b.Run(fmt.Sprintf("hash=%v", hash), func(b *testing.B) {
			b.SetBytes(total)
			for i := 0; i < b.N; i++ {
				ctx := context.Background()
				res, err := Scan(ctx, r, feed(ctx, files), WithHash(hash))
				if err != nil || res.Summary.Files != int64(len(files)) {
					b.Fatal(err, res.Summary)
				}
			}
		})
	}
}

// BenchmarkScanManyRules scans 500 files of 20 KB with 2,000 rules whose
// conditions read the file (uint16(0) == 0x5a4d and ...), the shape of the
// public rule sets: the cost per file must not grow with reads per rule.
func BenchmarkScanManyRules(b *testing.B) {
	r := mustRules(b, manyDataRules(2000))
	d := append([]byte("MZ\x00\x00\x00K"), bytes.Repeat([]byte{0xcc}, 20000)...)
	var files []File
	for i := 0; i < 500; i++ {
		files = append(files, File{Path: fmt.Sprintf("/w/f%d.exe", i), Size: int64(len(d)), Data: bytes.NewReader(d)})
	}
	b.SetBytes(int64(len(files) * len(d)))
	for i := 0; i < b.N; i++ {
		ctx := context.Background()
		res, err := Scan(ctx, r, feed(ctx, files), WithJobs(1))
		if err != nil || res.Summary.Files != int64(len(files)) || res.Summary.Findings != len(files) {
			b.Fatal(err, res.Summary)
		}
	}
}
