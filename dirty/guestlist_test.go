package dirty

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/fsparse"
)

// The guest's own listing of a filesystem (testdata/guest-disk/lister, run
// by the guest's /init before and after each workload): the reference of
// the guest tests. It comes from the guest kernel's stat, readlink,
// listxattr and read, not from vmscope's ext4 reader.

// listed is one line of a guest listing.
type listed struct {
	Path   string            `json:"path"`
	Ino    uint64            `json:"ino"`
	Type   string            `json:"type"`
	Perm   uint32            `json:"perm"`
	Uid    uint32            `json:"uid"`
	Gid    uint32            `json:"gid"`
	Size   int64             `json:"size"`
	Links  uint32            `json:"links"`
	Atime  int64             `json:"atime_ns"`
	Mtime  int64             `json:"mtime_ns"`
	Ctime  int64             `json:"ctime_ns"`
	Btime  int64             `json:"btime_ns"`
	Target string            `json:"target"`
	SHA256 string            `json:"sha256"`
	Xattrs map[string]string `json:"xattrs"`
}

// guestListing reads the listing tagged tag ("before vda", "after vdb")
// from a guest console log, as the nodes truthDiff compares.
func guestListing(t *testing.T, console, tag string) map[string]node {
	t.Helper()
	b, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	out, err := parseListing(b, tag)
	if err != nil {
		t.Fatalf("%s: %v", console, err)
	}
	return out
}

func parseListing(console []byte, tag string) (map[string]node, error) {
	start, end := "=== LIST "+tag+" ===", "=== END LIST "+tag+" ==="
	out := map[string]node{}
	in, done := false, false
	sc := bufio.NewScanner(bytes.NewReader(console))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasSuffix(line, start): // the console may put escapes before it
			if in || done {
				return nil, fmt.Errorf("listing %q twice", tag)
			}
			in = true
			continue
		case strings.HasSuffix(line, end):
			in, done = false, true
			continue
		case !in:
			continue
		}
		var l listed
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			return nil, fmt.Errorf("listing %q: line %q: %v", tag, line, err)
		}
		out[l.Path] = l.node()
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !done || len(out) == 0 {
		return nil, fmt.Errorf("no complete listing %q on the console", tag)
	}
	return out, nil
}

func (l listed) node() node {
	e := fsparse.Entry{Path: l.Path, Ino: l.Ino, Type: l.Type, Perm: fmt.Sprintf("%04o", l.Perm),
		Uid: l.Uid, Gid: l.Gid, Size: l.Size, Links: l.Links,
		Mtime: time.Unix(0, l.Mtime).UTC(), Atime: time.Unix(0, l.Atime).UTC(), Ctime: time.Unix(0, l.Ctime).UTC(),
		Target: l.Target}
	if l.Btime != 0 {
		bt := time.Unix(0, l.Btime).UTC()
		e.Crtime = &bt
	}
	var xs []string
	for _, k := range slices.Sorted(maps.Keys(l.Xattrs)) {
		xs = append(xs, k+"="+l.Xattrs[k])
	}
	return node{e: e, sum: l.SHA256, xattrs: strings.Join(xs, ",")}
}

// checkReaderAgrees compares vmscope's full walk of an image with the
// guest's listing of the same filesystem: every path, with its inode, type,
// mode, owner, size, links, the four times, symlink target and content.
func checkReaderAgrees(t *testing.T, walked, guest map[string]node) {
	t.Helper()
	for p, g := range guest {
		w, ok := walked[p]
		if !ok {
			t.Errorf("reader: %s is in the guest's listing, not in the walk", p)
			continue
		}
		a, b := w.e, g.e
		if a.Ino != b.Ino || a.Type != b.Type || a.Uid != b.Uid || a.Gid != b.Gid ||
			a.Size != b.Size || a.Links != b.Links || a.Target != b.Target || w.sum != g.sum ||
			!a.Mtime.Equal(b.Mtime) || !a.Atime.Equal(b.Atime) || !a.Ctime.Equal(b.Ctime) ||
			(a.Crtime == nil) != (b.Crtime == nil) || a.Crtime != nil && !a.Crtime.Equal(*b.Crtime) ||
			permBits(a.Perm) != permBits(b.Perm) {
			t.Errorf("reader: %s differs from the guest's view:\n walk  %+v %s\n guest %+v %s", p, a, w.sum, b, g.sum)
		}
	}
	for p := range walked {
		if _, ok := guest[p]; !ok && p != "/lost+found" {
			t.Errorf("reader: %s is in the walk, not in the guest's listing", p)
		}
	}
}

// permBits parses an octal permission string.
func permBits(s string) uint32 {
	var v uint32
	fmt.Sscanf(s, "%o", &v)
	return v
}

func TestParseListing(t *testing.T) {
	con := []byte("boot noise\r\n\x1bc\x1b[?7l=== LIST before vda ===\r\n" +
		`{"path":"/","ino":2,"type":"dir","perm":493,"uid":0,"gid":0,"size":4096,"links":3,"atime_ns":1,"mtime_ns":2,"ctime_ns":3,"btime_ns":4}` + "\r\n" +
		`{"path":"/a","ino":12,"type":"file","perm":420,"uid":1,"gid":2,"size":3,"links":1,"atime_ns":1,"mtime_ns":2,"ctime_ns":3,"btime_ns":0,"sha256":"ab","xattrs":{"user.b":"Ag==","user.a":"AQ=="}}` + "\r\n" +
		"=== END LIST before vda ===\r\n=== LIST after vda ===\n")
	got, err := parseListing(con, "before vda")
	if err != nil {
		t.Fatal(err)
	}
	a := got["/a"]
	if len(got) != 2 || a.e.Ino != 12 || a.e.Perm != "0644" || a.sum != "ab" || a.xattrs != "user.a=AQ==,user.b=Ag==" || a.e.Crtime != nil || got["/"].e.Crtime == nil {
		t.Fatalf("parsed %+v", got)
	}
	if _, err := parseListing(con, "after vda"); err == nil {
		t.Fatal("an unterminated listing parsed")
	}
	if _, err := parseListing(con, "before vdb"); err == nil {
		t.Fatal("a missing listing parsed")
	}
}
