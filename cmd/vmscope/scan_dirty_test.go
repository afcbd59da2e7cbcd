package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/dirty/state"
	"github.com/vmscope/vmscope/internal/fixture"
)

func run1(t *testing.T, dir, tool string, args ...string) string {
	t.Helper()
	return fixture.Run(t, dir, tool, args...)
}

// guestWrites builds base.img (mkfs.ext4 -d, no partition table) and
// changed.img: base plus a new file holding a marker (debugfs write) and a
// marker written over a data block of /etc/app.conf behind the filesystem's
// back (its inode, timestamps included, untouched: only the block and the
// content digest can tell). It returns the qemu-io commands that turn base
// into changed (testdata/blkdiff), and the files that changed with the
// rule each must match (testdata/rules/markers.yar).
func guestWrites(t *testing.T) (dir string, writes []string, want map[hit]bool) {
	t.Helper()
	dir = t.TempDir()
	tree := filepath.Join(dir, "tree")
	files := map[string]string{
		"etc/app.conf": strings.Repeat("setting=1\n", 1000),
		"etc/hosts":    "127.0.0.1 localhost\n",
	}
	for n := 0; n < 50; n++ {
		files[fmt.Sprintf("sub/f%03d", n)] = fmt.Sprintf("file %d\n", n)
	}
	for p, c := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run1(t, dir, "mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", tree, "-b", "4096", "base.img", "24M")
	run1(t, dir, "cp", "--sparse=always", "base.img", "changed.img")
	if err := os.WriteFile(filepath.Join(dir, "new.txt"), []byte("dropped VMSCOPE_MARKER_MIDDLE here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run1(t, dir, "debugfs", "-w", "-R", "write new.txt /sub/dropped.txt", "changed.img")
	out := run1(t, dir, "debugfs", "-R", "bmap /etc/app.conf 1", "changed.img")
	ls := strings.Split(strings.TrimSpace(out), "\n")
	blk, err := strconv.ParseInt(strings.TrimSpace(ls[len(ls)-1]), 10, 64)
	if err != nil || blk == 0 {
		t.Fatalf("debugfs bmap: %q", out)
	}
	f, err := os.OpenFile(filepath.Join(dir, "changed.img"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("EICAR-STANDARD-ANTIVIRUS-TEST-FILE"), blk*4096+100); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	gen := exec.Command("go", "run", "./testdata/blkdiff", filepath.Join(dir, "base.img"), filepath.Join(dir, "changed.img"), filepath.Join(dir, "chunks"))
	gen.Dir = fixture.Root()
	o, err := gen.Output()
	if err != nil {
		t.Fatalf("blkdiff: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(o))
	for sc.Scan() {
		writes = append(writes, sc.Text())
	}
	if len(writes) == 0 {
		t.Fatal("blkdiff: no writes")
	}
	return dir, writes, map[hit]bool{
		{"", "/sub/dropped.txt", "Marker_Middle"}: true,
		{"", "/etc/app.conf", "Eicar_Anywhere"}:   true,
	}
}

// dirtyImage makes, in dir, the image a source polls: an overlay on the
// raw base (cow), a qcow2 with an enabled persistent bitmap bm0 (bitmap),
// or a raw copy (hash); and the qemu-io format to write it with.
func dirtyImage(t *testing.T, dir, src string) (img, format string) {
	t.Helper()
	switch src {
	case "cow":
		run1(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", "ov.qcow2")
		return filepath.Join(dir, "ov.qcow2"), "qcow2"
	case "bitmap:bm0":
		run1(t, dir, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "base.img", "bm.qcow2")
		run1(t, dir, "qemu-img", "bitmap", "--add", "--enable", "bm.qcow2", "bm0")
		return filepath.Join(dir, "bm.qcow2"), "qcow2"
	}
	run1(t, dir, "cp", "--sparse=always", "base.img", "h.img")
	return filepath.Join(dir, "h.img"), "raw"
}

func listed(t *testing.T, ndjson string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(ndjson))
	for sc.Scan() {
		var c struct {
			Path string `json:"path"`
		}
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("dirty ndjson %q: %v", sc.Text(), err)
		}
		out[c.Path] = true
	}
	return out
}

// TestListingKeepsChangedFilesDue: for each dirty source, poll with a scan,
// let the guest write (qemu-io, the writes debugfs and an in-place write
// made), list the changes twice with vmscope dirty on the same state, then
// scan: the scan reads every changed file and finds both planted markers.
// A listing moves the cursor but never marks a file scanned. The scan
// after that has nothing left to scan.
func TestListingKeepsChangedFilesDue(t *testing.T) {
	rules := filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar")
	dir, writes, want := guestWrites(t)
	for _, src := range []string{"cow", "bitmap:bm0", "hash"} {
		t.Run(strings.TrimSuffix(src, ":bm0"), func(t *testing.T) {
			img, format := dirtyImage(t, dir, src)
			st := filepath.Join(t.TempDir(), "state.db")
			scanPoll := func() (map[hit]bool, string, int) {
				t.Helper()
				stdout, stderr, code := vmscope(t, "scan", "--format", "ndjson", "--rules", rules, "--dirty", src, "--state", st, img)
				hits := map[hit]bool{}
				sc := bufio.NewScanner(strings.NewReader(stdout))
				for sc.Scan() {
					var l struct{ Type, Partition, Path, Rule string }
					if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
						t.Fatalf("ndjson %q: %v", sc.Text(), err)
					}
					if l.Type == "finding" {
						hits[hit{l.Partition, l.Path, l.Rule}] = true
					}
				}
				return hits, stderr, code
			}
			if hits, stderr, code := scanPoll(); code != 0 || len(hits) != 0 {
				t.Fatalf("first poll: exit %d, findings %v: %s", code, hits, stderr)
			}
			args := []string{"-f", format}
			for _, w := range writes {
				args = append(args, "-c", w)
			}
			run1(t, dir, "qemu-io", append(args, img)...)

			dirtyArgs := []string{"dirty", img, "--state", st, "--format", "ndjson"}
			if name, ok := strings.CutPrefix(src, "bitmap:"); ok {
				dirtyArgs = append(dirtyArgs, "--bitmap", name)
			} else {
				dirtyArgs = append(dirtyArgs, "--source", src)
			}
			stdout, stderr, code := vmscope(t, dirtyArgs...)
			got := listed(t, stdout)
			if code != 0 || !got["/sub/dropped.txt"] || !got["/etc/app.conf"] {
				t.Fatalf("first listing: exit %d, %v: %s", code, got, stderr)
			}
			if stdout, stderr, code = vmscope(t, dirtyArgs...); code != 0 || stdout != "" {
				t.Fatalf("second listing: exit %d, %q: %s", code, stdout, stderr)
			}

			hits, stderr, code := scanPoll()
			if code != 1 || len(hits) != len(want) {
				t.Errorf("scan after two listings: exit %d, findings %v, want %v: %s", code, hits, want, stderr)
			}
			for h := range want {
				if !hits[h] {
					t.Errorf("scan after two listings missed %v: %s", h, stderr)
				}
			}
			if !strings.Contains(stderr, fmt.Sprintf("%d to scan", len(want))) {
				t.Errorf("scan after two listings: %q, want the %d changed files scanned", stderr, len(want))
			}
			if hits, stderr, code = scanPoll(); code != 0 || len(hits) != 0 || !strings.Contains(stderr, " 0 to scan") {
				t.Errorf("scan with nothing changed since the last scan: exit %d, findings %v: %s", code, hits, stderr)
			}
		})
	}
}

// TestFailedPollLeavesState: a poll that fails (a bitmap the image does
// not have) leaves the state file as it was, byte for byte: missing, empty
// (0 bytes), or the database of an earlier poll.
func TestFailedPollLeavesState(t *testing.T) {
	img := fixture.Path(t, "overlay-raw.qcow2")
	dir := t.TempDir()
	fails := func(st string) {
		t.Helper()
		if _, stderr, code := vmscope(t, "dirty", img, "--state", st, "--bitmap", "nosuch"); code != 2 {
			t.Errorf("dirty --bitmap nosuch: exit %d: %s", code, stderr)
		}
		if _, stderr, code := vmscope(t, "scan", "--dirty", "bitmap:nosuch", "--state", st, img); code != 2 {
			t.Errorf("scan --dirty bitmap:nosuch: exit %d: %s", code, stderr)
		}
	}

	missing := filepath.Join(dir, "missing.db")
	fails(missing)
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed poll created the missing state file: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("a failed poll left files: %v", entries)
	}

	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, empty)
	fails(empty)
	if after := stateOf(t, empty); after != before {
		t.Errorf("a failed poll changed the empty state file: %+v, was %+v", after, before)
	}
	// The empty file is a state like a missing one: the first poll fills it.
	if _, stderr, code := vmscope(t, "dirty", img, "--state", empty); code != 0 {
		t.Fatalf("first poll on an empty state file: exit %d: %s", code, stderr)
	}
	before = stateOf(t, empty)
	if before.size == 0 {
		t.Fatal("the first poll left the state file empty")
	}
	fails(empty)
	if after := stateOf(t, empty); after != before {
		t.Errorf("a failed poll changed the state file: %+v, was %+v", after, before)
	}
	if stdout, stderr, code := vmscope(t, "dirty", img, "--state", empty, "--format", "ndjson"); code != 0 || stdout != "" {
		t.Errorf("poll after failed ones: exit %d, %q: %s", code, stdout, stderr)
	}
}

// TestStateOnePollAtATime: a scan poll on a state that another vmscope
// holds (its lock, as bbolt takes it) waits, then refuses with ErrBusy's
// message; nothing is saved by the refused one.
func TestStateOnePollAtATime(t *testing.T) {
	img := fixture.Path(t, "overlay-raw.qcow2")
	st := filepath.Join(t.TempDir(), "state.db")
	if _, stderr, code := vmscope(t, "dirty", img, "--state", st); code != 0 {
		t.Fatalf("first poll: exit %d: %s", code, stderr)
	}
	before := stateOf(t, st)
	db, err := state.Open(st)
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, code := vmscope(t, "scan", "--dirty", "auto", "--state", st, img)
	db.Close()
	if code != 2 || !strings.Contains(stderr, "in use by another vmscope") {
		t.Errorf("scan poll on a held state: exit %d: %q", code, stderr)
	}
	if after := stateOf(t, st); after != before {
		t.Errorf("the refused poll changed the state file")
	}
}

// TestListingWithErrorsKeepsState: a dirty listing that meets an error (a
// journal with fast commits, which a poll does not replay) exits 2 and
// leaves the state as it was, as a scan poll does: the next poll redoes it.
func TestListingWithErrorsKeepsState(t *testing.T) {
	src := filepath.Join(fixture.Root(), "testdata", "out-guest-disk")
	for _, n := range []string{"fc-crash-before.img", "fc-crash.img"} {
		if _, err := os.Stat(filepath.Join(src, n)); err != nil {
			fixture.Missing(t, "%s (bash testdata/guest-disk/build.sh)", filepath.Join(src, n))
		}
	}
	dir := t.TempDir()
	img, st := filepath.Join(dir, "disk.img"), filepath.Join(dir, "state.db")
	run1(t, dir, "cp", "--sparse=always", filepath.Join(src, "fc-crash-before.img"), img)
	if _, stderr, code := vmscope(t, "dirty", img, "--state", st, "--source", "hash"); code != 0 {
		t.Fatalf("first poll: exit %d: %s", code, stderr)
	}
	before := stateOf(t, st)
	run1(t, dir, "cp", "--sparse=always", filepath.Join(src, "fc-crash.img"), img)
	_, stderr, code := vmscope(t, "dirty", img, "--state", st, "--source", "hash")
	if code != 2 || !strings.Contains(stderr, "fast commits") || !strings.Contains(stderr, "poll state not updated") {
		t.Errorf("poll of a journal with fast commits: exit %d: %s", code, stderr)
	}
	if after := stateOf(t, st); after != before {
		t.Error("a poll that ended with an error changed the state file")
	}
}

// TestFilteredScanLeavesFilesDue: a scan poll that leaves a changed file
// out (--include, --max-filesize) gives it no verdict: the file stays due
// until a scan reads it.
func TestFilteredScanLeavesFilesDue(t *testing.T) {
	rules := filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar")
	dir, writes, _ := guestWrites(t)
	img, format := dirtyImage(t, dir, "hash")
	st := filepath.Join(t.TempDir(), "state.db")
	scanPoll := func(extra ...string) map[hit]bool {
		t.Helper()
		hits, errs, code := scanHits(t, append([]string{"--rules", rules, "--dirty", "hash", "--state", st, img}, extra...)...)
		if len(errs) > 0 || code == 2 {
			t.Fatalf("scan %v: exit %d, errors %v", extra, code, errs)
		}
		return hits
	}
	if hits := scanPoll(); len(hits) != 0 {
		t.Fatalf("first poll: %v", hits)
	}
	args := []string{"-f", format}
	for _, w := range writes {
		args = append(args, "-c", w)
	}
	run1(t, dir, "qemu-io", append(args, img)...)
	dropped := hit{"", "/sub/dropped.txt", "Marker_Middle"}
	conf := hit{"", "/etc/app.conf", "Eicar_Anywhere"}
	for _, c := range []struct {
		filter []string
		want   map[hit]bool
	}{
		{[]string{"--include", "dropped.txt"}, map[hit]bool{dropped: true}},
		{[]string{"--max-filesize", "5000"}, map[hit]bool{}},
		{nil, map[hit]bool{conf: true}},
		{nil, map[hit]bool{}},
	} {
		if got := scanPoll(c.filter...); !maps.Equal(got, c.want) {
			t.Errorf("scan %v: findings %v, want %v", c.filter, got, c.want)
		}
	}
}
