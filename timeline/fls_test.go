package timeline

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
)

// The images compared with the Sleuth Kit: every ext fixture of
// testdata/fixtures.sh and the images of testdata/ir/build.sh (a copy of
// this machine's /etc with odd modes and devices; two images with deleted
// files).
var tskImages = []string{
	"out/ext4.img", "out/ext4-changed.img", "out/ext3.img", "out/ext2.img", "out/ext4-128.img",
	"out/ext4-inline.img", "out/ext4-64k.img", "out/ext4-nocsum-1k.img", "out/ext4-frag.img",
	"out-ir/realtree.img", "out-ir/del-debugfs.img", "out-ir/del-kernel.img", "out-ir/orphan-dir.img",
}

// mactimeOn are the images on which mactime runs over both body files.
var mactimeOn = map[string]bool{"ext4-changed.img": true, "realtree.img": true, "del-debugfs.img": true}

func imagePath(t *testing.T, rel string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", rel)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (make fixtures; bash testdata/ir/build.sh)", p)
	}
	return p
}

func openVolume(t *testing.T, img string) *fsparse.Volume {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	d, err := fsparse.Open(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Volumes) != 1 {
		t.Fatalf("%s: %d volumes", img, len(d.Volumes))
	}
	return d.Volumes[0]
}

func records(t *testing.T, v *fsparse.Volume) []Record {
	t.Helper()
	recs, probs, err := Walk(context.Background(), v, ".", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("walk: %v", p)
	}
	recs, probs, err = WalkDeleted(context.Background(), v, ".", "", recs)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("deleted: %v", p)
	}
	return recs
}

func bodyLines(recs []Record) []string {
	var out []string
	for i := range recs {
		out = append(out, strings.TrimSuffix(string(recs[i].AppendBody(nil)), "\n"))
	}
	return out
}

// tskView rewrites our record as the Sleuth Kit 4.11 prints the same
// metadata, each rule a named class of difference with its reason. It
// returns the record and the classes applied.
func tskView(t *testing.T, v *fsparse.Volume, r Record) (Record, []string) {
	var why []string
	// TSK writes each control byte of a name as '^'.
	if strings.IndexFunc(r.Name, func(c rune) bool { return c < 0x20 }) >= 0 {
		r.Name = strings.Map(func(c rune) rune {
			if c < 0x20 {
				return '^'
			}
			return c
		}, r.Name)
		why = append(why, "control-bytes-as-caret")
	}
	e := v.Ext4()
	if r.Ino == 0 {
		return r, nil
	}
	in, err := e.Inode(uint32(r.Ino))
	if err != nil {
		t.Fatalf("inode %d: %v", r.Ino, err)
	}
	// TSK prints the target of a symlink only when it is in i_block
	// (fast) or in a block-mapped data block (ext2/3); the target of an
	// extent-mapped or inline-data slow symlink is left out.
	if in.IsSymlink() && in.Size >= 60 && (in.IsExtentMapped() || in.HasInlineData()) {
		r.Target = ""
		why = append(why, "slow-symlink-target")
	}
	// TSK reads i_crtime on ext4 only (0 on ext2/ext3 whose large inodes
	// hold it too).
	if e.Super().Kind() != "ext4" && r.Crtime != nil {
		r.Crtime = nil
		why = append(why, "crtime-ext4-only")
	}
	// TSK reads the 32-bit seconds unsigned and ignores the epoch bits of
	// the extra fields: times after 2038 (and before 1970) print wrapped.
	wrap := func(tm *time.Time) {
		if tm.IsZero() {
			return
		}
		if s := tm.Unix(); s < 0 || s > 1<<32-1 {
			*tm = time.Unix(int64(uint32(s)), 0)
			why = append(why, "epoch-bits")
		}
	}
	wrap(&r.Atime)
	wrap(&r.Mtime)
	wrap(&r.Ctime)
	if r.Crtime != nil {
		c := *r.Crtime
		wrap(&c)
		r.Crtime = &c
	}
	return r, why
}

func runTool(t *testing.T, tool string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(fixture.Tool(t, tool), args...)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", tool, args, err, stderr.Bytes())
	}
	return out
}

// tskUnreadable returns the directories of v (by path) that fls cannot
// read (it prints an error and lists nothing of them): the htree /bigdir
// of the 128-byte-inode and 1 KiB-block fixtures. Our listing of each is
// checked against debugfs instead.
func tskUnreadable(t *testing.T, img string, v *fsparse.Volume, recs []Record, tsk map[string]bool) map[string]bool {
	out := map[string]bool{}
	for _, r := range recs {
		if !r.NameType.IsDir() {
			continue
		}
		has := false
		for _, c := range recs {
			if strings.HasPrefix(c.Name, r.Name+"/") {
				has = true
				break
			}
		}
		if !has {
			continue
		}
		seen := false
		for l := range tsk {
			if strings.HasPrefix(strings.SplitN(l, "|", 3)[1], r.Name+"/") {
				seen = true
				break
			}
		}
		if seen {
			continue
		}
		cmd := exec.Command(fixture.Tool(t, "fls"), img, strconv.FormatUint(r.Ino, 10))
		msg, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(msg), "Error") {
			t.Errorf("%s: fls lists nothing below %s but reads it without error: %s", img, r.Name, msg)
			continue
		}
		// debugfs is the reference for this directory: every name and
		// inode we list below it, and nothing else.
		ls := runTool(t, "debugfs", "-R", "ls -p "+r.Name, img)
		want := map[string]bool{}
		for _, l := range strings.Split(string(ls), "\n") {
			f := strings.Split(l, "/")
			if len(f) < 7 || f[5] == "." || f[5] == ".." || f[1] == "0" {
				continue
			}
			want[r.Name+"/"+f[5]+"|"+f[1]] = true
		}
		got := map[string]bool{}
		for _, c := range recs {
			if strings.HasPrefix(c.Name, r.Name+"/") && !strings.Contains(c.Name[len(r.Name)+1:], "/") {
				got[c.Name+"|"+strconv.FormatUint(c.Ino, 10)] = true
			}
		}
		if len(want) == 0 || !equalSets(got, want) {
			t.Errorf("%s: %s: %d entries, debugfs lists %d", img, r.Name, len(got), len(want))
		}
		out[r.Name] = true
	}
	return out
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// TestBodyFileMatchesFls: on every ext fixture our body file equals
// `fls -r -m /` line for line after sorting, but for the named classes of
// tskView, TSK's virtual $OrphanFiles directory and the directories TSK
// cannot read (checked against debugfs instead); deleted names and
// orphan inodes included. Then `mactime -b` gives the same
// timeline over both.
func TestBodyFileMatchesFls(t *testing.T) {
	for _, rel := range tskImages {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			img := imagePath(t, rel)
			v := openVolume(t, img)
			recs := records(t, v)
			tskOut := runTool(t, "fls", "-r", "-m", "/", img)
			tsk := map[string]bool{}
			for _, l := range strings.Split(strings.TrimSuffix(string(tskOut), "\n"), "\n") {
				switch {
				case strings.HasPrefix(l, "0|/$OrphanFiles|"): // TSK's virtual directory: no inode on disk
				default:
					tsk[l] = true
				}
			}
			skip := tskUnreadable(t, img, v, recs, tsk)
			classes := map[string]int{}
			var ours []Record
			for _, r := range recs {
				under := false
				for d := range skip {
					if strings.HasPrefix(r.Name, d+"/") {
						under = true
					}
				}
				if under {
					classes["tsk-unreadable-dir"]++
					continue
				}
				tr, why := tskView(t, v, r)
				for _, w := range why {
					classes[w]++
				}
				ours = append(ours, tr)
			}
			got := bodyLines(ours)
			gotSet := map[string]bool{}
			for _, l := range got {
				if gotSet[l] {
					t.Errorf("line twice: %s", l)
				}
				gotSet[l] = true
			}
			n := 0
			for l := range gotSet {
				if !tsk[l] {
					if n++; n <= 10 {
						t.Errorf("ours only: %s", l)
					}
				}
			}
			for l := range tsk {
				if !gotSet[l] && inHtreeIndex(t, v, l) {
					classes["tsk-htree-index-as-name"]++
					delete(tsk, l)
					continue
				}
				if !gotSet[l] {
					if n++; n <= 20 {
						t.Errorf("fls only: %s", l)
					}
				}
			}
			if n > 0 {
				t.Fatalf("%d lines differ", n)
			}
			t.Logf("%d lines equal; named differences: %v", len(got), classes)

			// mactime over both body files gives the same timeline (on a few
			// images: mactime is slow).
			if !mactimeOn[filepath.Base(rel)] {
				return
			}
			dir := t.TempDir()
			var tskLines []string
			for l := range tsk {
				tskLines = append(tskLines, l)
			}
			sort.Strings(tskLines)
			sort.Strings(got)
			write := func(name string, lines []string) string {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			}
			a := runTool(t, "mactime", "-b", write("ours.body", got), "-z", "UTC")
			b := runTool(t, "mactime", "-b", write("tsk.body", tskLines), "-z", "UTC")
			if !bytes.Equal(a, b) {
				t.Errorf("mactime over our body file differs from mactime over fls's")
			}
		})
	}
}

// TestCSVMatchesMactime: our csv is byte for byte what `mactime -b -d`
// writes from our own body file (unmodified, nanoseconds and epoch bits
// included), in two time zones and with a date range.
func TestCSVMatchesMactime(t *testing.T) {
	for _, rel := range []string{"out/ext4-changed.img", "out-ir/realtree.img", "out-ir/del-debugfs.img"} {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			img := imagePath(t, rel)
			recs := records(t, openVolume(t, img))
			body := filepath.Join(t.TempDir(), "body")
			var bb bytes.Buffer
			if err := WriteBody(&bb, recs); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(body, bb.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				tz, from, to string
			}{{"UTC", "", ""}, {"America/New_York", "", ""}, {"UTC", "third", ""}, {"Asia/Kolkata", "third", ""}} {
				if rel == "out/ext4-changed.img" && c.tz != "UTC" {
					continue // 5,000 files: one zone is enough
				}
				loc, err := time.LoadLocation(c.tz)
				if err != nil {
					t.Fatal(err)
				}
				args := []string{"-b", body, "-d", "-z", c.tz}
				var since, until time.Time
				if c.from == "third" {
					// The middle third of the times, in the zone.
					var ss []int64
					for i := range recs {
						if s := recs[i].Mtime.Unix(); s > 0 {
							ss = append(ss, s)
						}
					}
					sort.Slice(ss, func(i, j int) bool { return ss[i] < ss[j] })
					ss = slices.Compact(ss)
					c.from = time.Unix(ss[len(ss)/3], 0).In(loc).Format("2006-01-02T15:04:05")
					c.to = time.Unix(ss[2*len(ss)/3], 0).In(loc).Format("2006-01-02T15:04:05")
				}
				if c.from != "" {
					args = append(args, c.from+".."+c.to)
					since = parseIn(t, c.from, loc)
					until = parseIn(t, c.to, loc)
				}
				want := runTool(t, "mactime", args...)
				var got bytes.Buffer
				if err := WriteCSV(&got, CSVEvents(recs, since, until), loc); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got.Bytes(), want) {
					gl, wl := strings.Split(got.String(), "\n"), strings.Split(string(want), "\n")
					for i := 0; i < len(gl) && i < len(wl); i++ {
						if gl[i] != wl[i] {
							t.Fatalf("%v: line %d:\n got  %s\n want %s", c, i+1, gl[i], wl[i])
						}
					}
					t.Fatalf("%v: %d lines, mactime %d", c, len(gl), len(wl))
				}
				if n := bytes.Count(want, []byte("\n")); n < 10 {
					t.Fatalf("%v: only %d lines", c, n)
				}
			}
		})
	}
}

func parseIn(t *testing.T, s string, loc *time.Location) time.Time {
	for _, l := range []string{"2006-01-02T15:04:05", "2006-01-02"} {
		if tm, err := time.ParseInLocation(l, s, loc); err == nil {
			return tm
		}
	}
	t.Fatalf("bad time %q", s)
	return time.Time{}
}

// inHtreeIndex reports whether the fls line names an entry that is not a
// directory entry but bytes of an htree index: its directory is indexed
// and the name's bytes lie in an index block: the root (the first block,
// after "." and the ".." record that covers the dx_root) or an index node
// (a block that starts with an empty record spanning it, then dx
// entries). TSK reads directories linearly and takes such bytes for names.
func inHtreeIndex(t *testing.T, v *fsparse.Volume, line string) bool {
	f := strings.Split(line, "|")
	if len(f) < 3 {
		return false
	}
	name := strings.TrimSuffix(strings.TrimSuffix(f[1], " (deleted-realloc)"), " (deleted)")
	dir, base := filepath.Split(name)
	e := v.Ext4()
	ino, err := e.Lookup(strings.Trim(filepath.Clean(dir), "/"))
	if dir == "/" {
		ino, err = 2, nil
	}
	if err != nil {
		return false
	}
	in, err := e.Inode(ino)
	if err != nil || in.Flags&0x1000 == 0 {
		return false
	}
	ext, err := e.Extents(ino)
	if err != nil {
		return false
	}
	bs := int64(e.Super().BlockSize)
	b := make([]byte, bs)
	for _, x := range ext {
		for i := uint64(0); i < x.Len; i++ {
			if _, err := v.Device.ReadAt(b, int64(x.Physical+i)*bs); err != nil {
				return false
			}
			idx := b[24:]
			if x.Logical+i != 0 {
				if b[0]|b[1]|b[2]|b[3] != 0 || int64(b[4])|int64(b[5])<<8 != bs%65536 || b[6] != 0 {
					continue
				}
				idx = b[8:]
			}
			if containsTSKName(idx, base) {
				return true
			}
		}
	}
	return false
}

// containsTSKName reports whether b holds name as TSK prints it: TSK
// writes each control byte of a name as '^'.
func containsTSKName(b []byte, name string) bool {
	for i := 0; i+len(name) <= len(b); i++ {
		ok := true
		for j := 0; j < len(name) && ok; j++ {
			c := b[i+j]
			ok = c == name[j] || (name[j] == '^' && c < 0x20)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestDeletedMatchesFls: the deleted names and orphan inodes fsparse finds
// equal `fls -r -d -p` by path, inode and realloc mark, on the image
// debugfs deleted from (rm, kill_file, unlink, rmdir, in linear and htree
// directories, then inodes reused), on the one a real kernel deleted from
// (it wipes the records: only orphan inodes remain) and on the fixtures
// with deletions; TSK-only lines are bytes of htree index blocks (named
// class, checked).
func TestDeletedMatchesFls(t *testing.T) {
	for _, rel := range []string{"out-ir/del-debugfs.img", "out-ir/del-kernel.img", "out-ir/orphan-dir.img", "out/ext4-frag.img", "out/ext4-changed.img", "out/ext4.img", "out/ext4-nocsum-1k.img"} {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			img := imagePath(t, rel)
			v := openVolume(t, img)
			s, err := v.ScanDeleted(context.Background(), ".")
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for _, d := range s.Deleted {
				k := fmt.Sprintf("%s|%d|%v", d.Path, d.Ino, d.Realloc)
				if got[k] {
					t.Errorf("twice: %s", k)
				}
				got[k] = true
			}
			want := map[string]bool{}
			re := regexp.MustCompile(`^\S+ \* (\d+)(\(realloc\))?:\t(.*)$`)
			htree := 0
			for _, l := range strings.Split(strings.TrimSpace(string(runTool(t, "fls", "-r", "-d", "-p", img))), "\n") {
				if l == "" {
					continue
				}
				m := re.FindStringSubmatch(l)
				if m == nil {
					t.Fatalf("fls line %q", l)
				}
				k := fmt.Sprintf("/%s|%s|%v", m[3], m[1], m[2] != "")
				if !got[k] && inHtreeIndex(t, v, "0|/"+m[3]+"|") {
					htree++
					continue
				}
				want[k] = true
			}
			for k := range got {
				if !want[k] {
					t.Errorf("ours only: %s", k)
				}
			}
			for k := range want {
				if !got[k] {
					t.Errorf("fls only: %s", k)
				}
			}
			if len(want)+htree == 0 {
				t.Fatal("fls lists nothing deleted: the fixture proves nothing")
			}
			t.Logf("%d deleted names and orphans equal; %d TSK names in htree index blocks", len(want), htree)
		})
	}
}

// TestUnlinkedMatchesIls: the inodes in use that no live name names are
// those `ils -a` lists as allocated, less the inodes `fls -r` names, less
// the reserved inodes below s_first_ino.
func TestUnlinkedMatchesIls(t *testing.T) {
	for _, rel := range []string{"out-ir/del-debugfs.img", "out-ir/del-kernel.img", "out-ir/orphan-dir.img", "out/ext4-frag.img"} {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			img := imagePath(t, rel)
			v := openVolume(t, img)
			s, err := v.ScanDeleted(context.Background(), ".")
			if err != nil {
				t.Fatal(err)
			}
			got := map[uint64]bool{}
			for _, d := range s.Unlinked {
				got[d.Ino] = true
			}
			named := map[string]bool{}
			for _, l := range strings.Split(string(runTool(t, "fls", "-r", "-u", "-p", img)), "\n") {
				if f := strings.Fields(l); len(f) >= 2 {
					named[strings.TrimSuffix(strings.SplitN(f[1], "(", 2)[0], ":")] = true
				}
			}
			first := uint64(v.Ext4().Super().FirstIno)
			want := map[uint64]bool{}
			for _, l := range strings.Split(string(runTool(t, "ils", "-a", img)), "\n") {
				f := strings.Split(l, "|")
				if len(f) < 2 || f[1] != "a" {
					continue
				}
				ino, err := strconv.ParseUint(f[0], 10, 64)
				if err != nil || ino < first || named[f[0]] {
					continue
				}
				want[ino] = true
			}
			for k := range got {
				if !want[k] {
					t.Errorf("ours only: inode %d", k)
				}
			}
			for k := range want {
				if !got[k] {
					t.Errorf("ils/fls only: inode %d", k)
				}
			}
			t.Logf("%d unlinked inodes equal", len(want))
		})
	}
}
