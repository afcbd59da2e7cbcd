// Command lister runs inside the guest-disk fixture's guest (a static binary
// in its initramfs) and prints the guest kernel's own view of a mounted
// filesystem: the independent reference of the dirty-file tests. Each entry
// is one line of JSON (path, inode, type, mode, uid, gid, size, links, the
// four timestamps in nanoseconds, symlink target, the sha256 of a regular
// file's content, extended attributes), sorted by path, between markers:
//
//	lister list TAG DIR     === LIST TAG ===, one JSON line per entry, === END LIST TAG ===
//	lister setxattr PATH NAME VALUE   set a user xattr (busybox has no setfattr)
//
// Files are read with O_NOATIME, so listing changes nothing on the disk.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry is one line of a listing. dirty/guestlist_test.go reads it.
type Entry struct {
	Path   string            `json:"path"`
	Ino    uint64            `json:"ino"`
	Type   string            `json:"type"` // file, dir, symlink, other
	Perm   uint32            `json:"perm"` // mode & 07777
	Uid    uint32            `json:"uid"`
	Gid    uint32            `json:"gid"`
	Size   int64             `json:"size"`
	Links  uint32            `json:"links"`
	Atime  int64             `json:"atime_ns"`
	Mtime  int64             `json:"mtime_ns"`
	Ctime  int64             `json:"ctime_ns"`
	Btime  int64             `json:"btime_ns"` // 0: not reported
	Target string            `json:"target,omitempty"`
	SHA256 string            `json:"sha256,omitempty"`
	Xattrs map[string]string `json:"xattrs,omitempty"` // name -> base64 value
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "list" {
		if err := list(os.Args[2], os.Args[3]); err != nil {
			fmt.Printf("=== FAIL lister %v ===\n", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) == 5 && os.Args[1] == "setxattr" {
		if err := unix.Lsetxattr(os.Args[2], os.Args[3], []byte(os.Args[4]), 0); err != nil {
			fmt.Fprintf(os.Stderr, "setxattr: %v\n", err)
			os.Exit(1)
		}
		return
	}
	fmt.Fprintln(os.Stderr, "usage: lister list TAG DIR | lister setxattr PATH NAME VALUE")
	os.Exit(2)
}

func list(tag, root string) error {
	var out []Entry
	var walk func(p, rel string, depth int) error
	walk = func(p, rel string, depth int) error {
		if depth > 64 {
			return fmt.Errorf("%s: deeper than 64 levels", p)
		}
		e, err := entry(p, rel)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, e)
		if e.Type != "dir" {
			return nil
		}
		names, err := readDir(p)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, n := range names {
			if rel == "/" && n == "lost+found" {
				continue
			}
			if err := walk(filepath.Join(p, n), path.Join(rel, n), depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root, "/", 0); err != nil {
		return err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "=== LIST %s ===\n", tag)
	for _, e := range out {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		w.Write(b)
		w.WriteByte('\n')
	}
	fmt.Fprintf(w, "=== END LIST %s ===\n", tag)
	return w.Flush()
}

// readDir lists a directory opened with O_NOATIME (reading it leaves its
// access time as it was).
func readDir(p string) ([]string, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	return f.Readdirnames(-1)
}

func entry(p, rel string) (Entry, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_ALL|unix.STATX_BTIME, &st); err != nil {
		return Entry{}, err
	}
	ns := func(t unix.StatxTimestamp) int64 { return t.Sec*1e9 + int64(t.Nsec) }
	e := Entry{Path: rel, Ino: st.Ino, Perm: uint32(st.Mode) & 0o7777, Uid: st.Uid, Gid: st.Gid,
		Size: int64(st.Size), Links: st.Nlink, Atime: ns(st.Atime), Mtime: ns(st.Mtime), Ctime: ns(st.Ctime)}
	if st.Mask&unix.STATX_BTIME != 0 {
		e.Btime = ns(st.Btime)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type = "file"
		sum, err := hashFile(p)
		if err != nil {
			return e, err
		}
		e.SHA256 = sum
	case unix.S_IFDIR:
		e.Type = "dir"
	case unix.S_IFLNK:
		e.Type = "symlink"
		t, err := os.Readlink(p)
		if err != nil {
			return e, err
		}
		e.Target = t
	default:
		e.Type = "other"
	}
	x, err := xattrs(p)
	if err != nil {
		return e, err
	}
	e.Xattrs = x
	return e, nil
}

func hashFile(p string) (string, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func xattrs(p string) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if err == unix.ENOTSUP {
			return nil, nil
		}
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	var out map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = base64.StdEncoding.EncodeToString(v[:m])
	}
	return out, nil
}
