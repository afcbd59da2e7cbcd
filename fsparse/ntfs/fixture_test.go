package ntfs

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
)

// ntfsFixture returns a file of testdata/ntfs/build.sh's output, or skips
// (fails under CI) when it has not been built.
func ntfsFixture(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-ntfs", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/ntfs/build.sh)", p)
	}
	return p
}

func openImage(t testing.TB, name string) *FS {
	t.Helper()
	fh, err := os.Open(ntfsFixture(t, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fh.Close() })
	st, _ := fh.Stat()
	f, err := Open(fh, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// listing is every entry of the volume by path, through fsparse's walk.
func listing(t *testing.T, f *FS) map[string]fsparse.Entry {
	t.Helper()
	v := &fsparse.Volume{ID: "disk", FS: f}
	out := map[string]fsparse.Entry{}
	err := v.Walk(context.Background(), ".", func(e fsparse.Entry, err error) error {
		if err != nil {
			t.Errorf("%s: %v", e.Path, err)
		}
		if e.Path != "/" {
			out[e.Path] = e
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFSTest(t *testing.T) {
	// In memory: iotest's one-byte reads would each be a system call.
	raw, err := os.ReadFile(ntfsFixture(t, "ntfs.img"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	// fstest reads every file several times: a sub-tree keeps it short;
	// the rest of the tree is checked against the source below.
	sub, err := fs.Sub(f, "docs")
	if err != nil {
		t.Fatal(err)
	}
	if err := fstest.TestFS(sub, "blob1.bin", "blob1.bin:Zone.Identifier", "numbers.txt:hidden", "deep/er/still/leaf.txt", "third.txt"); err != nil {
		t.Fatal(err)
	}
	for dir, files := range map[string][]string{"zip": {"text.txt", "zeros.bin"}, "sparse": {"holes.bin"}, "links": {"stomped.txt"}} {
		sub, _ := fs.Sub(f, dir)
		if err := fstest.TestFS(sub, files...); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
	}
}

// TestTreeMatchesSource: every file, directory and symlink of the source
// tree is on the volume with the same bytes and target, and the volume
// holds nothing else (streams aside).
func TestTreeMatchesSource(t *testing.T) {
	f := openImage(t, "ntfs.img")
	tree := ntfsFixture(t, "tree")
	got := listing(t, f)
	want := map[string]bool{}
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		if rel == "." {
			return nil
		}
		gp := "/" + filepath.ToSlash(rel)
		want[gp] = true
		e, ok := got[gp]
		if !ok {
			t.Errorf("%s: missing", gp)
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			tg, _ := os.Readlink(p)
			if e.Type != "symlink" || e.Target != tg {
				t.Errorf("%s: %s -> %q, want symlink -> %q", gp, e.Type, e.Target, tg)
			}
		case d.IsDir():
			if e.Type != "dir" {
				t.Errorf("%s: %s, want dir", gp, e.Type)
			}
		default:
			wantB, _ := os.ReadFile(p)
			r, err := f.OpenInode(e.Ino)
			if err != nil {
				t.Errorf("%s: %v", gp, err)
				return nil
			}
			gotB, err := io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
			if err != nil || !bytes.Equal(gotB, wantB) {
				t.Errorf("%s: %d bytes (%v), want %d bytes equal to the source", gp, len(gotB), err, len(wantB))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, e := range got {
		if e.Stream == "" && !want[p] {
			t.Errorf("%s: on the volume, not in the source", p)
		}
	}
	if len(want) < 3000 {
		t.Fatalf("source tree of %d entries", len(want))
	}
}

// flsEntry is one line of fls -r -p: "r/r 3086-128-4:\thello.txt:small".
var flsLine = regexp.MustCompile(`^(\S)/(\S) (\*? ?)(\d+)-(\d+)-(\d+):\t(.*)$`)

// TestListingMatchesFls: the paths (with streams) and MFT records equal
// Sleuth Kit's fls -r -p, the metadata files aside; compression, sparse
// flags and stream sizes against istat are in TestStreamsMatchNtfscat.
func TestListingMatchesFls(t *testing.T) {
	f := openImage(t, "ntfs.img")
	got := listing(t, f)
	b, err := os.ReadFile(ntfsFixture(t, "fls.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		m := flsLine.FindStringSubmatch(line)
		if m == nil || m[3] != "" || strings.HasPrefix(m[7], "$") || strings.Contains(m[7], "/.:") {
			continue
		}
		rec, _ := strconv.ParseUint(m[4], 10, 64)
		want["/"+m[7]] = rec
	}
	if len(want) < 3000 {
		t.Fatalf("fls.txt: %d entries", len(want))
	}
	for p, rec := range want {
		e, ok := got[p]
		if !ok {
			t.Errorf("fls lists %s (record %d), we do not", p, rec)
		} else if e.Ino != rec {
			t.Errorf("%s: record %d, fls %d", p, e.Ino, rec)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("we list %s, fls does not", p)
		}
	}
}

// TestStreamsMatchNtfscat: every named stream reads as ntfscat -a 128 -n
// prints it, and the unnamed streams of the compressed and sparse files
// as ntfscat does.
func TestStreamsMatchNtfscat(t *testing.T) {
	ntfscat := fixture.Tool(t, "ntfscat")
	img := ntfsFixture(t, "ntfs.img")
	f := openImage(t, "ntfs.img")
	n := 0
	for p, e := range listing(t, f) {
		if e.Stream == "" && !strings.HasPrefix(p, "/zip/") && !strings.HasPrefix(p, "/sparse/") {
			continue
		}
		if e.Type != "file" {
			continue
		}
		file := strings.TrimSuffix(p, ":"+e.Stream)
		args := []string{"-f", img, file}
		if e.Stream != "" {
			args = append(args, "-a", "128", "-n", e.Stream)
		}
		want, err := exec.Command(ntfscat, args...).Output()
		if err != nil {
			t.Fatalf("ntfscat %v: %v", args, err)
		}
		r, err := f.OpenStream(e.Ino, e.Stream)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		got, err := io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
		if err != nil || !bytes.Equal(got, want) || e.Size != int64(len(want)) {
			t.Errorf("%s: %d bytes (size %d, %v), ntfscat %d bytes", p, len(got), e.Size, err, len(want))
		}
		n++
	}
	if n < 10 {
		t.Fatalf("%d streams checked", n)
	}
	e, err := f.Lstat("zip/text.txt")
	if err != nil || !hasAttr(e.Attrs, "compressed") {
		t.Errorf("zip/text.txt: attributes %v (%v), want compressed", e.Attrs, err)
	}
	e, err = f.Lstat("sparse/holes.bin")
	if err != nil || !hasAttr(e.Attrs, "sparse") {
		t.Errorf("sparse/holes.bin: attributes %v (%v), want sparse", e.Attrs, err)
	}
}

// istatTimes reads the $STANDARD_INFORMATION and $FILE_NAME "File
// Modified" and "Created" times of record rec from istat.
func istatTimes(t *testing.T, img string, rec uint64) (si, fn [2]time.Time) {
	out, err := exec.Command(fixture.Tool(t, "istat"), img, strconv.FormatUint(rec, 10)).Output()
	if err != nil {
		t.Fatal(err)
	}
	var cur *[2]time.Time
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "$STANDARD_INFORMATION Attribute Values"):
			cur = &si
		case strings.HasPrefix(l, "$FILE_NAME Attribute Values"):
			cur = &fn
		case strings.HasPrefix(l, "Attributes:"):
			cur = nil
		}
		if cur == nil {
			continue
		}
		for i, k := range []string{"Created:\t", "File Modified:\t"} {
			if strings.HasPrefix(l, k) {
				s := strings.TrimSuffix(strings.TrimPrefix(l, k), " (UTC)")
				tm, err := time.Parse("2006-01-02 15:04:05.999999999", s)
				if err != nil {
					t.Fatalf("istat time %q: %v", s, err)
				}
				cur[i] = tm
			}
		}
	}
	return si, fn
}

// TestTimestomp: both time sets equal istat's, and the file whose
// $STANDARD_INFORMATION times were set by hand shows the difference.
func TestTimestomp(t *testing.T) {
	img := ntfsFixture(t, "ntfs.img")
	f := openImage(t, "ntfs.img")
	for _, p := range []string{"links/stomped.txt", "hello.txt", "docs/blob1.bin", "big"} {
		e, err := f.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		si, fn := istatTimes(t, img, e.Ino)
		if e.FNTimes == nil {
			t.Fatalf("%s: no $FILE_NAME times", p)
		}
		if !e.Crtime.Equal(si[0]) || !e.Mtime.Equal(si[1]) || !e.FNTimes.Crtime.Equal(fn[0]) || !e.FNTimes.Mtime.Equal(fn[1]) {
			t.Errorf("%s: SI %v %v FN %v %v, istat SI %v FN %v", p, e.Crtime, e.Mtime, e.FNTimes.Crtime, e.FNTimes.Mtime, si, fn)
		}
	}
	e, _ := f.Lstat("links/stomped.txt")
	stomp := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if !e.Mtime.Equal(stomp) || !e.Atime.Equal(stomp) || e.FNTimes.Mtime.Year() < 2020 || e.FNTimes.Mtime.Equal(e.Mtime) {
		t.Errorf("stomped.txt: SI mtime %v crtime %v, FN mtime %v", e.Mtime, *e.Crtime, e.FNTimes.Mtime)
	}
}

func TestDirtyVolume(t *testing.T) {
	if f := openImage(t, "ntfs-dirty.img"); !f.Dirty() || !hasAttr(f.Info().Features, "dirty") {
		t.Errorf("ntfs-dirty.img: flags %#x, features %v: want dirty", f.VolFlags, f.Info().Features)
	}
	if f := openImage(t, "ntfs.img"); f.Dirty() || hasAttr(f.Info().Features, "dirty") {
		t.Errorf("ntfs.img: flags %#x, features %v: want clean", f.VolFlags, f.Info().Features)
	}
}

func TestHardLinksAndSymlink(t *testing.T) {
	f := openImage(t, "ntfs.img")
	var recs []uint64
	for _, p := range []string{"links/orig.txt", "links/second.txt", "docs/third.txt"} {
		e, err := f.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if e.Links != 3 {
			t.Errorf("%s: %d links, want 3", p, e.Links)
		}
		recs = append(recs, e.Ino)
	}
	if recs[0] != recs[1] || recs[1] != recs[2] {
		t.Errorf("hard links in records %v", recs)
	}
	// An attribute list: 151 names of one file spill into extension records.
	ml, err := f.Lstat("manylinks/orig")
	if err != nil || ml.Links != 151 {
		t.Errorf("manylinks/orig: %d links (%v), want 151", ml.Links, err)
	}
	if x, err := f.File(ml.Ino); err != nil || len(x.Ext) == 0 || len(x.Names()) < 151 {
		t.Errorf("manylinks/orig: no extension records (%v)", err)
	}
	// A reparse point: reported as a symlink with its target, not followed.
	rp, err := f.Lstat("reparse-link")
	if err != nil || rp.Type != "symlink" || rp.Target != "hello.txt" || !hasAttr(rp.Attrs, "reparse") || !hasAttr(rp.Attrs, "reparse-tag=0xa000000c") {
		t.Errorf("reparse-link: %+v %v", rp, err)
	}
	e, err := f.Lstat("link-to-hello")
	if err != nil || e.Type != "symlink" || e.Target != "hello.txt" {
		t.Errorf("link-to-hello: %+v %v", e, err)
	}
	if _, err := f.OpenFile("link-to-hello"); err == nil {
		// A symlink's content is its Interix data, never the target's.
		r, _ := f.OpenFile("link-to-hello")
		b := make([]byte, 8)
		r.ReadAt(b, 0)
		if string(b) != "IntxLNK\x01" {
			t.Errorf("link-to-hello read %q", b)
		}
	}
}

// TestClusterMap: block → (file, stream) equals Sleuth Kit's ifind -d
// and ntfscluster -c on sampled clusters: every cluster of the streams of
// the fixture's interesting files, and every 997th cluster of the volume.
func TestClusterMap(t *testing.T) {
	ifind := fixture.Tool(t, "ifind")
	ntfscluster := fixture.Tool(t, "ntfscluster")
	img := ntfsFixture(t, "ntfs.img")
	f := openImage(t, "ntfs.img")
	m, err := f.Owners(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	samples := map[uint64]bool{}
	for lcn := uint64(0); lcn < f.Clusters; lcn += 997 {
		samples[lcn] = true
	}
	for _, p := range []string{"hello.txt", "docs/numbers.txt", "docs/blob1.bin", "docs/blob2.bin", "docs/blob3.bin", "zip/text.txt", "zip/seq.txt", "sparse/holes.bin", "big", "."} {
		e, _ := f.Lstat(p)
		x, _ := f.File(e.Ino)
		for _, s := range x.AllStreams() {
			for _, r := range s.Runs() {
				if !r.Sparse {
					samples[r.LCN] = true
					samples[r.LCN+r.Len-1] = true
				}
			}
		}
	}
	var lcns []uint64
	for l := range samples {
		lcns = append(lcns, l)
	}
	sort.Slice(lcns, func(i, j int) bool { return lcns[i] < lcns[j] })
	owned := 0
	for _, lcn := range lcns {
		out, err := exec.Command(ifind, "-d", strconv.FormatUint(lcn, 10), img).Output()
		if err != nil {
			t.Fatalf("ifind -d %d: %v", lcn, err)
		}
		want := strings.TrimSpace(string(out))
		got := m.Lookup(lcn)
		switch {
		case len(got) > 1:
			t.Errorf("cluster %d: %d owners %v", lcn, len(got), got)
		case len(got) == 0 && want != "Inode not found" && !strings.HasPrefix(want, "Meta Data") && !strings.HasPrefix(want, "0-128") && !strings.HasPrefix(want, "8-128"):
			t.Errorf("cluster %d: no owner, ifind %q", lcn, want)
		case len(got) == 1 && got[0].String() != want:
			t.Errorf("cluster %d: %v, ifind %q", lcn, got[0], want)
		}
		if len(got) == 1 {
			owned++
			// ntfscluster names the stream: "Inode R /path/$DATA($name)".
			out, err := exec.Command(ntfscluster, "-c", strconv.FormatUint(lcn, 10), img).CombinedOutput()
			if err != nil {
				t.Fatalf("ntfscluster -c %d: %v", lcn, err)
			}
			o := got[0]
			wantLine := "Inode " + strconv.FormatUint(o.Record, 10) + " "
			if !strings.Contains(string(out), wantLine) {
				t.Errorf("cluster %d: record %d, ntfscluster %q", lcn, o.Record, out)
			}
			if o.Type == attrData && o.Name != "" && !strings.Contains(string(out), "($"+o.Name+")") && !strings.Contains(string(out), "("+o.Name+")") {
				t.Errorf("cluster %d: stream %q, ntfscluster %q", lcn, o.Name, out)
			}
		}
	}
	if owned < 30 {
		t.Fatalf("only %d of %d sampled clusters owned", owned, len(lcns))
	}
	_ = path.Join
}
