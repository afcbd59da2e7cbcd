package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
)

// namePatch renames one directory entry of a hostile image byte for byte:
// the entry named from in directory dir becomes to.
type namePatch struct {
	dir, from, to string
	dirIno        int64
	recOff        int64 // byte offset of the record in the image
}

func tool(t *testing.T, name string) string {
	t.Helper()
	for _, d := range []string{"", "/sbin/", "/usr/sbin/"} {
		if p, err := exec.LookPath(d + name); err == nil {
			return p
		}
	}
	fixture.Missing(t, "%s not installed (scripts/deps.sh)", name)
	return ""
}

// debugfs runs one debugfs request on img and returns its output.
func debugfs(t *testing.T, img string, write bool, req string) string {
	t.Helper()
	args := []string{"-R", req, img}
	if write {
		args = append([]string{"-w"}, args...)
	}
	out, err := exec.Command(tool(t, "debugfs"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %s: %v\n%s", req, err, out)
	}
	return string(out)
}

// hostileImage builds an ext4 filesystem image with mkfs.ext4 -d from a
// tree that holds the symlinks and placeholder names, links a directory a
// second time with debugfs ln, then patches the placeholder names in the
// directory blocks (found with debugfs blocks) into names no file system
// allows. metadata_csum is off, so a patched block needs no checksum.
// host is the absolute host directory the guest symlink d/lnk points to.
func hostileImage(t *testing.T, dir, host string) (string, []namePatch) {
	return buildHostile(t, dir, host, false)
}

// buildHostile is hostileImage; with only, the image holds nothing but
// the case: d/lnk -> host and an entry named "lnk/evil".
func buildHostile(t *testing.T, dir, host string, only bool) (string, []namePatch) {
	src := filepath.Join(dir, "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	file := func(p, content string) {
		must(os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755))
		must(os.WriteFile(filepath.Join(src, p), []byte(content), 0o644))
	}
	link := func(target, p string) {
		must(os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755))
		must(os.Symlink(target, filepath.Join(src, p)))
	}
	link(host, "d/lnk")          // absolute, to the host
	file("d/lnkQevil", "evil\n") // -> "lnk/evil"
	if !only {
		otherHostile(file, link)
	}
	img := filepath.Join(dir, "hostile.img")
	out, err := exec.Command(tool(t, "mkfs.ext4"), "-q", "-F", "-t", "ext4", "-O", "^metadata_csum", "-b", "4096",
		"-E", "root_owner=0:0", "-d", src, img, "16M").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if !only {
		debugfs(t, img, true, "ln /e/dirA /e/dirlink")
	}

	patches := []namePatch{
		{dir: "/d", from: "lnkQevil", to: "lnk/evil"},
	}
	more := []namePatch{
		{dir: "/d", from: "upQx", to: "up/x"},
		{dir: "/d", from: "upQdir", to: "up/dir"},
		{dir: "/d", from: "s1Qz", to: "s1/z"},
		{dir: "/d", from: "QQ", to: ".."},
		{dir: "/d", from: "Q", to: "."},
		{dir: "/d", from: "nulQx", to: "nul\x00x"},
		{dir: "/d", from: "emptyname", to: ""},
		{dir: "/", from: "QQ", to: ".."},
		{dir: "/e", from: "dupd", to: "dupf"},
	}
	if !only {
		patches = append(patches, more...)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	must(err)
	defer f.Close()
	inoRE := regexp.MustCompile(`Inode: (\d+)`)
	for i := range patches {
		p := &patches[i]
		m := inoRE.FindStringSubmatch(debugfs(t, img, false, "stat "+p.dir))
		if m == nil {
			t.Fatalf("debugfs stat %s: no inode", p.dir)
		}
		p.dirIno, _ = strconv.ParseInt(m[1], 10, 64)
		blocks := strings.Fields(debugfs(t, img, false, "blocks "+p.dir))
		found := false
		for _, b := range blocks {
			blk, err := strconv.ParseInt(b, 10, 64)
			if err != nil {
				continue
			}
			buf := make([]byte, 4096)
			_, err = f.ReadAt(buf, blk*4096)
			must(err)
			// A record: inode, rec_len, name_len, file type, name.
			for off := 0; off+8 <= len(buf); {
				rl := int(buf[off+4]) | int(buf[off+5])<<8
				nl := int(buf[off+6])
				if rl < 12 || off+rl > len(buf) {
					break
				}
				if nl == len(p.from) && string(buf[off+8:off+8+nl]) == p.from && !found {
					found = true
					p.recOff = blk*4096 + int64(off)
					copy(buf[off+8:], p.to)
					buf[off+6] = byte(len(p.to))
					_, err := f.WriteAt(buf, blk*4096)
					must(err)
				}
				off += rl
			}
		}
		if !found {
			t.Fatalf("entry %s in %s not found in blocks %v", p.from, p.dir, blocks)
		}
	}
	return img, patches
}

// otherHostile adds the other hostile entries of hostileImage to its tree.
func otherHostile(file func(p, content string), link func(target, p string)) {
	link("../../..", "d/up")       // climbs out of DIR/d by three levels
	file("d/upQx", "up-x\n")       // -> "up/x"
	file("d/upQdir/inner", "in\n") // -> "up/dir", a directory
	link("s2", "d/s1")             // a chain: s1 -> s2 -> ../..
	link("../..", "d/s2")
	file("d/s1Qz", "s1-z\n")       // -> "s1/z"
	file("d/QQ/f", "dotdot\n")     // -> "..", a directory in slot 3+
	file("d/Q", "dot\n")           // -> "."
	file("d/nulQx", "nul\n")       // -> "nul\x00x"
	file("d/emptyname", "empty\n") // -> ""
	file("QQ/f2", "rootdotdot\n")  // -> ".." in the root directory
	file("e/dirA/fa", "a\n")       // linked again as e/dirlink
	file("e/dupf", "dup-file\n")   // a file and ...
	file("e/dupd/g", "dup-dir\n")  // ... a directory -> "dupf"
}

// treeListing lists everything under root except skip: path, type, mode,
// size, content digest, link target.
func treeListing(t *testing.T, root, skip string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return fs.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v %d %v", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			tgt, _ := os.Readlink(p)
			line += " -> " + tgt
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestExtractSlashThroughHostSymlink is the case alone: a guest
// symlink d/lnk to an absolute host directory and an entry named
// "lnk/evil". extract must not create host/evil.
func TestExtractSlashThroughHostSymlink(t *testing.T) {
	tmp := t.TempDir()
	host := filepath.Join(tmp, "host")
	if err := os.MkdirAll(host, 0o755); err != nil {
		t.Fatal(err)
	}
	img, _ := buildHostile(t, t.TempDir(), host, true)
	dest := filepath.Join(tmp, "out")
	if err := os.MkdirAll(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	before := treeListing(t, tmp, dest)
	_, stderr, code := vmscope(t, "extract", img, dest)
	if _, err := os.Lstat(filepath.Join(host, "evil")); err == nil {
		t.Fatalf("extract created %s on the host (exit %d)", filepath.Join(host, "evil"), code)
	}
	if after := treeListing(t, tmp, dest); after != before {
		t.Errorf("extract changed files outside DIR:\n%s\n%s", before, after)
	}
	if code != 2 || !strings.Contains(stderr, `entry "lnk/evil"`) {
		t.Errorf("exit %d, stderr %q: want the name reported and exit 2", code, stderr)
	}
}

// TestExtractHostileNames extracts an image whose names and symlinks try to
// write outside DIR: a name with '/' through a symlink to an absolute host
// directory, relative symlink chains climbing out, ".." and "." outside
// their slots, a NUL in a name, an empty name, a hard link to a directory,
// a file and a directory of the same name. Nothing outside DIR changes,
// every bad name is reported with its directory inode and record offset
// (as debugfs and the byte patch place it) and written under its escaped
// name, and ls shows it escaped.
func TestExtractHostileNames(t *testing.T) {
	tmp := t.TempDir()
	host := filepath.Join(tmp, "host")
	if err := os.MkdirAll(host, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(host, "keep"), []byte("host file\n"), 0o644)
	img, patches := hostileImage(t, t.TempDir(), host)
	// DIR is two levels below tmp: "../../.." from DIR/d is tmp itself.
	dest := filepath.Join(tmp, "work", "out")
	if err := os.MkdirAll(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	before := treeListing(t, tmp, dest)

	_, stderr, code := vmscope(t, "extract", img, dest)
	if code != 2 {
		t.Errorf("extract exit %d, want 2; stderr:\n%s", code, stderr)
	}
	if after := treeListing(t, tmp, dest); after != before {
		t.Fatalf("extract changed files outside DIR:\nbefore:\n%s\nafter:\n%s\nstderr:\n%s", before, after, stderr)
	}
	for _, p := range patches {
		if p.to == "dupf" {
			continue
		}
		want := fmt.Sprintf("directory inode %d: entry %q", p.dirIno, p.to)
		at := fmt.Sprintf("at offset %d", p.recOff)
		found := false
		for _, l := range strings.Split(stderr, "\n") {
			if strings.Contains(l, want) && strings.Contains(l, at) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem %q %q on stderr:\n%s", want, at, stderr)
		}
		// Written under the escaped name, whose escapes give the name back.
		esc := fsparse.EscapeName(p.to)
		if got, err := strconv.Unquote(`"` + strings.ReplaceAll(esc, `\-`, ``) + `"`); err != nil || got != p.to {
			t.Errorf("escaped name %q does not decode to %q: %q %v", esc, p.to, got, err)
		}
		local := filepath.Join(dest, filepath.FromSlash(strings.TrimPrefix(p.dir, "/")), esc)
		if _, err := os.Lstat(local); err != nil {
			t.Errorf("%q not written under its escaped name: %v", p.to, err)
		}
	}
	for local, want := range map[string]string{
		`d/lnk\057evil`:     "evil\n",
		`d/up\057x`:         "up-x\n",
		`d/up\057dir/inner`: "in\n",
		`d/\056\056/f`:      "dotdot\n",
		`d/\056`:            "dot\n",
		`d/nul\000x`:        "nul\n",
		`d/\-`:              "empty\n",
		`\056\056/f2`:       "rootdotdot\n",
		`e/dirA/fa`:         "a\n",
		`e/dupd/g`:          "",
		`d/s1\057z`:         "s1-z\n",
	} {
		b, err := os.ReadFile(filepath.Join(dest, filepath.FromSlash(local)))
		if want == "" {
			if err == nil {
				t.Errorf("%s exists: the directory renamed dupf is not dupd any more", local)
			}
			continue
		}
		if err != nil || string(b) != want {
			t.Errorf("%s: %q %v, want %q", local, b, err, want)
		}
	}
	if tgt, err := os.Readlink(filepath.Join(dest, "d", "lnk")); err != nil || tgt != host {
		t.Errorf("symlink d/lnk: %q %v, want %q as in the guest", tgt, err, host)
	}
	for _, want := range []string{"second name for a directory", "/e/dupf"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not report %q:\n%s", want, stderr)
		}
	}

	// ls: escaped as ls -b, never a path with an extra level.
	out, lerr, code := vmscope(t, "ls", "-r", img)
	if code != 2 {
		t.Errorf("ls -r exit %d, want 2", code)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		lines[l] = true
	}
	for _, want := range []string{`/d/lnk\057evil`, `/d/up\057dir`, `/d/up\057dir/inner`, `/d/\056\056`, `/d/nul\000x`, `/d/\-`, `/\056\056`} {
		if !lines[want] {
			t.Errorf("ls -r lacks %s:\n%s", want, out)
		}
	}
	for _, bad := range []string{"/d/lnk/evil", "/d/up/x", "/d/..", "/.."} {
		if lines[bad] {
			t.Errorf("ls -r shows %s as a path", bad)
		}
	}
	if !strings.Contains(lerr, "lnk/evil") {
		t.Errorf("ls -r does not report the bad names:\n%s", lerr)
	}
	js, _, _ := vmscope(t, "ls", "--format", "json", img, "/d")
	var ents []struct {
		Path    string `json:"path"`
		Problem *struct {
			Where  string `json:"where"`
			Offset int64  `json:"offset"`
			Kind   string `json:"kind"`
		} `json:"problem"`
	}
	if err := json.Unmarshal([]byte(js), &ents); err != nil {
		t.Fatalf("ls json: %v\n%s", err, js)
	}
	byPath := map[string]int64{}
	for _, e := range ents {
		if e.Problem != nil {
			if e.Problem.Kind != "corrupt" {
				t.Errorf("%s: kind %q", e.Path, e.Problem.Kind)
			}
			byPath[e.Path] = e.Problem.Offset
		}
	}
	for _, p := range patches {
		if p.dir != "/d" {
			continue
		}
		jp := "/d/" + fsparse.EscapeName(p.to)
		if off, ok := byPath[jp]; !ok || off != p.recOff {
			t.Errorf("ls json: %s problem offset %d (present %v), want %d", jp, off, ok, p.recOff)
		}
	}
	if len(byPath) != 8 {
		t.Errorf("ls json: %d entries with a problem, want 8: %v", len(byPath), byPath)
	}
	if bytes.Contains([]byte(js), []byte(`"/d/lnk/evil"`)) {
		t.Errorf("ls json holds the name as a path")
	}
}
