package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

var update = flag.Bool("update", false, "rewrite golden files")

// vmscope runs the CLI in-process through cobra, as main does.
func vmscope(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

type fileState struct {
	sum   [32]byte
	mtime time.Time
	size  int64
}

func stateOf(t *testing.T, p string) fileState {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s fileState
	copy(s.sum[:], h.Sum(nil))
	s.mtime, s.size = fi.ModTime(), fi.Size()
	return s
}

// TestCommandsLeaveImagesUnchanged runs every command on every kind of
// fixture (raw, qcow2 with compression, a 3-layer chain, an overlay on a raw
// base, MBR with FAT) and checks that no file of any chain changed: same
// bytes, same size, same mtime.
func TestCommandsLeaveImagesUnchanged(t *testing.T) {
	images := []string{"gpt.img", "gpt-zstd.qcow2", "chain-top.qcow2", "overlay-raw.qcow2", "mbr.img"}
	watched := []string{"gpt.img", "gpt-zstd.qcow2", "chain-top.qcow2", "chain-mid.qcow2", "chain-base.qcow2", "overlay-raw.qcow2", "ext4.img", "mbr.img"}
	before := map[string]fileState{}
	for _, w := range watched {
		before[w] = stateOf(t, fixture.Path(t, w))
	}
	for _, img := range images {
		p := fixture.Path(t, img)
		pre := "p1:"
		if strings.HasPrefix(img, "chain") || strings.HasPrefix(img, "overlay") {
			pre = ""
		}
		catPath := pre + "/etc/passwd"
		if img == "mbr.img" {
			catPath = "p2:/README"
		}
		for _, args := range [][]string{
			{"info", p},
			{"info", "--format", "json", p},
			{"ls", p},
			{"ls", "-rl", p},
			{"ls", "-r", "--format", "ndjson", p},
			{"cat", p, catPath},
			{"scan", "--format", "json", "--hash", p},
		} {
			_, stderr, code := vmscope(t, args...)
			if code != 0 && !(args[0] == "scan" && code == 1) {
				t.Errorf("vmscope %v: exit %d: %s", args, code, stderr)
			}
		}
	}
	for _, w := range watched {
		if after := stateOf(t, fixture.Path(t, w)); after != before[w] {
			t.Errorf("%s changed: before %+v after %+v", w, before[w], after)
		}
	}
}

// TestCatByteExact compares cat's output with the source files, including
// the 110 MiB file, the sparse files and a name that is not UTF-8.
func TestCatByteExact(t *testing.T) {
	img := fixture.Path(t, "gpt-zstd.qcow2")
	for _, f := range []string{"data/big.bin", "data/sparse.bin", "data/holes.bin", "names/bad-\xff\xfe-latin1-\xe9.txt", "small/d03/f001.txt", "data/empty"} {
		stdout, stderr, code := vmscope(t, "cat", img, "p1:/"+f)
		if code != 0 {
			t.Fatalf("cat %s: exit %d: %s", f, code, stderr)
		}
		want, err := os.ReadFile(filepath.Join(fixture.Dir(), "tree", f))
		if err != nil {
			t.Fatal(err)
		}
		if stdout != string(want) {
			t.Errorf("cat %q: %d bytes differ from the source's %d", f, len(stdout), len(want))
		}
	}
}

// TestLsRecursiveMatchesTree checks that ls -r lists exactly the source tree.
func TestLsRecursiveMatchesTree(t *testing.T) {
	stdout, stderr, code := vmscope(t, "ls", "-r", "--format", "ndjson", fixture.Path(t, "ext4.img"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	got := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var e struct {
			Path    string `json:"path"`
			PathRaw []byte `json:"path_raw"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		if e.PathRaw != nil {
			e.Path = string(e.PathRaw)
		}
		got[e.Path] = true
	}
	src := filepath.Join(fixture.Dir(), "tree")
	n := 0
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			return nil
		}
		n++
		if !got["/"+rel] {
			t.Errorf("%q not listed", "/"+rel)
		}
		return nil
	})
	// lost+found is the only entry not from the tree.
	if len(got) != n+1 {
		t.Errorf("listed %d entries, the tree has %d (+ lost+found)", len(got), n)
	}
}

func TestLsGolden(t *testing.T) {
	stdout, stderr, code := vmscope(t, "ls", "-rl", fixture.Path(t, "mbr.img"), "p2:/srv")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	golden(t, "ls-mbr-p2-srv.txt", stdout)
}

// TestErrors checks the exit status and message of each kind of failure.
func TestErrors(t *testing.T) {
	dir := t.TempDir()
	trunc := filepath.Join(dir, "trunc.qcow2")
	b, err := os.ReadFile(fixture.Path(t, "chain-top.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(trunc, b[:70000], 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"info", filepath.Join(dir, "missing.img")}, "no such file"},
		{[]string{"ls", trunc}, "qcow"},
		{[]string{"cat", fixture.Path(t, "gpt.img"), "/etc/passwd"}, "name one, as in p1:/path"},
		{[]string{"cat", fixture.Path(t, "gpt.img"), "p1:/no/such/file"}, "not exist"},
		{[]string{"cat", fixture.Path(t, "gpt.img"), "p9:/etc/passwd"}, "no such volume"},
		{[]string{"cat", fixture.Path(t, "gpt.img"), "p1:/etc"}, "not a regular file"},
		{[]string{"ls", "--format", "xml", fixture.Path(t, "gpt.img")}, "--format"},
		{[]string{"ls"}, "arg"},
		{[]string{"info", "--bogus", "x"}, "unknown flag"},
	} {
		_, stderr, code := vmscope(t, c.args...)
		if code != 2 {
			t.Errorf("vmscope %v: exit %d, want 2 (%s)", c.args, code, stderr)
		}
		if !strings.Contains(stderr, c.want) {
			t.Errorf("vmscope %v: stderr %q does not say %q", c.args, stderr, c.want)
		}
	}
}

// TestExtractMatchesTree extracts a whole filesystem and compares the copy
// with the source tree it was made from: names, types, permissions, owners,
// mtimes (to the second, as mkfs.ext4 -d keeps them), link targets, bytes.
func TestExtractMatchesTree(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "x")
	_, stderr, code := vmscope(t, "extract", fixture.Path(t, "ext4-128.img"), dst)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	src := filepath.Join(fixture.Dir(), "tree-small")
	n := 0
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." || fi.Mode()&os.ModeNamedPipe != 0 {
			return nil // special files are not created
		}
		n++
		q := filepath.Join(dst, rel)
		gi, err := os.Lstat(q)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if gi.Mode() != fi.Mode() || !gi.ModTime().Equal(fi.ModTime().Truncate(time.Second)) && fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s: %v %v, want %v %v", rel, gi.Mode(), gi.ModTime(), fi.Mode(), fi.ModTime())
		}
		switch {
		case fi.Mode().IsRegular():
			a, _ := os.ReadFile(p)
			b, _ := os.ReadFile(q)
			if !bytes.Equal(a, b) {
				t.Errorf("%s: content differs", rel)
			}
		case fi.Mode()&os.ModeSymlink != 0:
			a, _ := os.Readlink(p)
			b, _ := os.Readlink(q)
			if a != b {
				t.Errorf("%s: target %q, want %q", rel, b, a)
			}
		}
		return nil
	})
	if n < 1000 {
		t.Fatalf("only %d files compared", n)
	}
}

// TestInfoBitmaps: info lists a persistent bitmap made by qemu-img with the
// bytes qemu-io wrote, rounded out to the bitmap's granularity.
func TestInfoBitmaps(t *testing.T) {
	img := filepath.Join(t.TempDir(), "b.qcow2")
	qimg, qio := fixture.Tool(t, "qemu-img"), fixture.Tool(t, "qemu-io")
	for _, args := range [][]string{
		{qimg, "create", "-q", "-f", "qcow2", img, "64M"},
		{qimg, "bitmap", "--add", "--enable", "-g", "65536", img, "snap1"},
		{qio, "-c", "write 1M 200k", "-c", "write 10M 4k", img},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	stdout, stderr, code := vmscope(t, "info", "--format", "json", img)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var doc infoDoc
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatal(err)
	}
	bs := doc.Chain[0].Bitmaps
	if len(bs) != 1 || bs[0].Name != "snap1" || !bs[0].Enabled || bs[0].InUse || bs[0].DirtyBytes == nil {
		t.Fatalf("bitmaps %+v", bs)
	}
	if want := int64(256<<10 + 64<<10); *bs[0].DirtyBytes != want {
		t.Errorf("dirty %d bytes, want %d", *bs[0].DirtyBytes, want)
	}
}

func TestPrintableAndMode(t *testing.T) {
	for in, want := range map[string]string{
		"plain.txt":       "plain.txt",
		"ünïcødé":         "ünïcødé",
		"bad-\xff\xfe":    `bad-\377\376`,
		"tab\there":       `tab\011here`,
		`back\slash`:      `back\\slash`,
		"nl\n":            `nl\012`,
		"latin1-\xe9.txt": `latin1-\351.txt`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
	for m, want := range map[os.FileMode]string{
		os.ModeDir | 0o755:                        "drwxr-xr-x",
		os.ModeDir | os.ModeSticky | 0o777:        "drwxrwxrwt",
		os.ModeSetuid | 0o755:                     "-rwsr-xr-x",
		os.ModeSetgid | 0o644:                     "-rw-r-Sr--",
		os.ModeSymlink | 0o777:                    "lrwxrwxrwx",
		os.ModeNamedPipe | 0o600:                  "prw-------",
		os.ModeDevice | os.ModeCharDevice | 0o620: "crw--w----",
		os.ModeSticky | os.ModeDir:                "d--------T",
	} {
		if got := modeString(m); got != want {
			t.Errorf("modeString(%v) = %s, want %s", m, got, want)
		}
	}
}
