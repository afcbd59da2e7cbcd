package scan

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Blocks of 64 KiB overlapping by 16 KiB (step 48 KiB): needles inside
// the overlap are seen by two blocks, needles straddling a boundary by one.
func TestBlocksBoundaryAndDedup(t *testing.T) {
	const bs, ov = 64 << 10, 16 << 10
	const step = bs - ov
	size := int64(10*step + 1234)
	needle := "NEEDLE-0123456789"
	offs := []int64{
		0,
		step + 100,                // in the overlap of blocks 0 and 1: seen twice
		bs - 5,                    // straddles the end of block 0
		2*step - 3,                // straddles the start of block 2
		3*step + ov - 8,           // straddles the end of the overlap
		size - int64(len(needle)), // at the very end
	}
	g := &genReader{size: size, needles: map[int64]string{}}
	for _, o := range offs {
		g.needles[o] = needle
	}
	r := mustRules(t, fmt.Sprintf(`
rule needles {
  strings: $n = %q
  condition: #n == %d and filesize == %d and uint32be(filesize-4) == 0x%x
}`, needle, len(offs), size, []byte(needle[len(needle)-4:])))
	for _, bsz := range []int64{bs, DefaultBlockSize} {
		res := scanFiles(t, r, []File{{Path: "/big", Size: size, Data: g}}, WithBlockSize(bsz), WithOverlap(ov), WithJobs(1))
		if len(res.Findings) != 1 {
			t.Fatalf("block %d: findings %+v errors %v", bsz, res.Findings, res.Errors)
		}
		f := res.Findings[0]
		if f.StringCount != len(offs) {
			t.Errorf("block %d: %d matches, want %d (dedup across overlapping blocks)", bsz, f.StringCount, len(offs))
		}
		for i, s := range f.Strings {
			if s.Offset != offs[i] || s.ID != "$n" || s.Length != len(needle) {
				t.Errorf("block %d: match %d = %+v, want offset %d", bsz, i, s, offs[i])
			}
		}
	}
}

func TestBlockIterLayout(t *testing.T) {
	for _, tc := range []struct {
		size, bs, ov int64
		want         []int64 // base:len pairs
	}{
		{0, 100, 10, []int64{0, 0}},
		{1, 100, 10, []int64{0, 1}},
		{100, 100, 10, []int64{0, 100}},
		{101, 100, 10, []int64{0, 100, 90, 11}},
		{190, 100, 10, []int64{0, 100, 90, 100}},
		{191, 100, 10, []int64{0, 100, 90, 100, 180, 11}},
	} {
		it := blockIter{blockSize: tc.bs, step: tc.bs - tc.ov}
		it.reset(context.Background(), bytes.NewReader(make([]byte, tc.size)), tc.size, nil, nil)
		var got []int64
		for b := it.First(); b != nil; b = it.Next() {
			got = append(got, int64(b.Base), int64(b.Size))
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("size %d: blocks %v, want %v", tc.size, got, tc.want)
		}
	}
}

func TestHashAndExternals(t *testing.T) {
	r := mustRules(t, `
rule ext {
  condition: filename == "x.PHP" and filepath == "/var/www/x.PHP" and extension == ".php" and
             filetype == "UNIX SCRIPT" and owner == "www-data" and md5 == ""
}
rule uid { condition: owner == "33" }
rule big { strings: $a = "MARK" condition: $a }`)
	small := []byte("#!/usr/bin/php\n<?php echo 1; ?>\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 100000) // 1.6 MB, several 64 KiB blocks
	copy(big[len(big)-4:], "MARK")
	plain := []byte("nothing here")
	files := []File{
		{Path: "/var/www/x.PHP", Size: int64(len(small)), Owner: "www-data", Data: bytes.NewReader(small)},
		{Path: "/srv/y", Size: int64(len(small)), Uid: 33, Data: bytes.NewReader(small)},
		{Path: "/big", Size: int64(len(big)), Data: bytes.NewReader(big)},
		{Path: "/plain", Size: int64(len(plain)), Data: bytes.NewReader(plain)},
	}
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	for _, hash := range []bool{false, true} {
		res := scanFiles(t, r, files, WithHash(hash), WithBlockSize(64<<10), WithOverlap(4096), WithJobs(3))
		got := map[string]string{}
		for _, f := range res.Findings {
			got[f.Path+" "+f.Rule] = f.SHA256
		}
		want := map[string]string{
			"/var/www/x.PHP ext": sum(small),
			"/srv/y uid":         sum(small),
			"/big big":           sum(big),
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("hash=%v: got %v, want %v", hash, got, want)
		}
		if res.Summary.Files != 4 || res.Summary.Matched != 3 || res.Summary.Bytes != int64(2*len(small)+len(big)+len(plain)) {
			t.Errorf("hash=%v: summary %+v", hash, res.Summary)
		}
	}
}

func TestFileType(t *testing.T) {
	for in, want := range map[string]string{
		"\x7fELF\x02":                "ELF",
		"MZ\x90\x00":                 "EXE",
		"#!/bin/sh\n":                "UNIX SCRIPT",
		"#! /bin/sh\n":               "Script",
		"PK\x03\x04abc":              "ZIP",
		"PK\x03\x04\x14\x00\x06\x00": "Office",
		"\x1f\x8b\x08":               "GZIP",
		"<% out.print(1) %>":         "JSP",
		"<%@ Page %>":                "ASP",
		"<%-- c --%>":                "JSP",
		"<?php echo 1;":              "PHP",
		"@echo off":                  "BATCH",
		"echo hi":                    "BATCH",
		"\xcf\xfa\xed\xfe":           "MACH-O",
		"hello\n":                    "UNKNOWN",
		"a\x00b":                     "UNKNOWN",
		"":                           "UNKNOWN",
	} {
		if got := fileType([]byte(in)); got != want {
			t.Errorf("fileType(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"/a/b.PHP": ".php", "/a/.bashrc": "", "/a/b": "", "/a.d/b": "", "/x.tar.gz": ".gz"} {
		if got := extension(in); got != want {
			t.Errorf("extension(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPatterns(t *testing.T) {
	for _, tc := range []struct {
		pat, path string
		want      bool
	}{
		{"*.php", "/var/www/a/x.php", true},
		{"*.php", "/var/www/a/x.phps", false},
		{"/etc/*", "/etc/passwd", true},
		{"etc/*", "/etc/passwd", true},
		{"/etc/*", "/etc/cron.d/x", false},
		{"/etc/**", "/etc/cron.d/x", true},
		{"/etc/**", "/etc", false},
		{"/var/www/**/*.php", "/var/www/x.php", true},
		{"/var/www/**/*.php", "/var/www/a/b/x.php", true},
		{"/var/www/**/*.php", "/var/lib/x.php", false},
		{"**/.ssh/authorized_keys", "/root/.ssh/authorized_keys", true},
		{"**/.ssh/authorized_keys", "/home/a/.ssh/authorized_keys", true},
		{"/usr/**/lib*.so*", "/usr/lib/x86_64-linux-gnu/libc.so.6", true},
		{"authorized_keys", "/root/.ssh/authorized_keys", true},
	} {
		p, err := compilePattern(tc.pat)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.match(tc.path); got != tc.want {
			t.Errorf("%q match %q = %v, want %v", tc.pat, tc.path, got, tc.want)
		}
	}
	if _, err := Scan(context.Background(), mustRules(t, `rule a { condition: true }`), nil, WithInclude("[")); !errors.Is(err, ErrOption) {
		t.Errorf("bad pattern: %v", err)
	}
}

func TestSelectSkipErrors(t *testing.T) {
	r := mustRules(t, `rule all_files { condition: true }`)
	data := bytes.Repeat([]byte("x"), 300000)
	files := []File{
		{Partition: "p1", Path: "/a.php", Size: 10, Data: bytes.NewReader(data[:10])},
		{Partition: "p1", Path: "/b.txt", Size: 10, Data: bytes.NewReader(data[:10])},
		{Partition: "p1", Path: "/tmp/c.php", Size: 10, Data: bytes.NewReader(data[:10])},
		{Partition: "p1", Path: "/big.php", Size: int64(len(data)), Data: bytes.NewReader(data)},
		{Partition: "p1", Path: "/bad.php", Size: int64(len(data)), Data: failReader{bytes.NewReader(data), 200000}},
		{Partition: "p1", Path: "/short.php", Size: 100, Data: bytes.NewReader(data[:50])},
		{Partition: "p1", Path: "/z.php", Size: 10, Data: bytes.NewReader(data[:10])},
	}
	res := scanFiles(t, r, files, WithInclude("*.php"), WithExclude("/tmp/**"), WithMaxFileSize(250000), WithJobs(2))
	var paths []string
	for _, f := range res.Findings {
		paths = append(paths, f.Path)
	}
	if got := strings.Join(paths, " "); got != "/a.php /z.php" {
		t.Errorf("findings %s", got)
	}
	if len(res.Skipped) != 2 || res.Skipped[0].Path != "/bad.php" || res.Skipped[1].Path != "/big.php" {
		t.Errorf("skipped %+v", res.Skipped)
	}
	if len(res.Errors) != 1 || res.Errors[0].Path != "/short.php" {
		t.Errorf("errors %+v", res.Errors)
	}
	if res.Summary.Excluded != 2 {
		t.Errorf("summary %+v", res.Summary)
	}
	// Without the size cap the failing reader is read past 200000.
	res = scanFiles(t, r, files[4:5], WithBlockSize(64<<10), WithOverlap(4096))
	if len(res.Errors) != 1 || !errors.Is(res.Errors[0].Err, errBadSector) || len(res.Findings) != 0 {
		t.Fatalf("errors %+v findings %+v", res.Errors, res.Findings)
	}
	var fe FileError
	if !errors.As(error(res.Errors[0]), &fe) || fe.Path != "/bad.php" {
		t.Errorf("FileError %+v", fe)
	}
}

func TestCancel(t *testing.T) {
	r := mustRules(t, `rule r { strings: $a = "NEVER-THERE" condition: $a }`)
	ctx, cancel := context.WithCancel(context.Background())
	files := make(chan File)
	go func() {
		// A 1 TiB file: the scan must stop in the middle of it.
		files <- File{Path: "/huge", Size: 1 << 40, Data: &genReader{size: 1 << 40}}
		<-ctx.Done()
	}()
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	res, err := Scan(ctx, r, files, WithJobs(2))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %s", d)
	}
	if res == nil || len(res.Findings)+len(res.Errors) != 0 || res.Summary.Files != 0 {
		t.Errorf("result %+v", res)
	}
}

func vmRSS(t testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// A 1 GiB synthetic file with a match near its end is scanned in bounded
// memory: Go heap and resident set stay far below the file size.
func TestBoundedMemory1GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB scan")
	}
	const size = 1 << 30
	r := mustRules(t, `rule tail { strings: $a = "TAIL-MARKER" condition: $a and filesize == 1073741824 }`)
	g := &genReader{size: size, needles: map[int64]string{size - 100: "TAIL-MARKER"}}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap0, rss0 := ms.HeapInuse, vmRSS(t)
	done := make(chan struct{})
	var peakHeap uint64
	var peakRSS int64
	go func() {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				peakHeap = max(peakHeap, m.HeapInuse)
				peakRSS = max(peakRSS, vmRSS(t))
			}
		}
	}()
	p := &Progress{}
	res := scanFiles(t, r, []File{{Path: "/huge", Size: size, Data: g}}, WithHash(true), WithProgress(p))
	close(done)
	if len(res.Findings) != 1 || res.Findings[0].Strings[0].Offset != size-100 {
		t.Fatalf("findings %+v errors %v", res.Findings, res.Errors)
	}
	if p.Bytes.Load() != size || p.Files.Load() != 1 {
		t.Errorf("progress %s", p.Line())
	}
	t.Logf("heap %d→%d MiB peak, rss %d→%d MiB peak, %s", heap0>>20, peakHeap>>20, rss0>>20, peakRSS>>20, res.Summary.Duration)
	if peakHeap > heap0+64<<20 {
		t.Errorf("heap grew %d MiB", (peakHeap-heap0)>>20)
	}
	if peakRSS > rss0+128<<20 {
		t.Errorf("rss grew %d MiB", (peakRSS-rss0)>>20)
	}
}

func TestProgressLine(t *testing.T) {
	p := &Progress{}
	p.Files.Store(1234)
	p.TotalFiles.Store(5000)
	p.Bytes.Store(1_000_000_000)
	p.TotalBytes.Store(4_000_000_000)
	p.Findings.Store(2)
	got := p.line(2 * time.Second)
	want := "1,234/5,000 files  1.0 GB/4.0 GB  500 MB/s  ETA 6s  2 findings  0 errors"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	var b bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Render(ctx, &b, time.Hour)
	if !strings.HasPrefix(b.String(), "\r1,234/5,000 files") || !strings.HasSuffix(b.String(), "\n") {
		t.Errorf("render %q", b.String())
	}
}
