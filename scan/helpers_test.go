package scan

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// LoadRulesString compiles src written to a temp file.
func LoadRulesString(t testing.TB, src string) (*Rules, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "test.yar")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return LoadRules(p)
}

func mustRules(t testing.TB, src string) *Rules {
	t.Helper()
	r, err := LoadRulesString(t, src)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// genReader is a synthetic file: filler bytes (never matching the test
// rules) with needles planted at given offsets. It allocates nothing.
type genReader struct {
	size    int64
	needles map[int64]string
}

func (g *genReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= g.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > g.size-off {
		n = int(g.size - off)
	}
	for i := 0; i < n; i++ {
		x := off + int64(i)
		p[i] = "abcdefghijklmnopqrstuvwxyz012345"[(x^(x>>7))&31]
	}
	for at, s := range g.needles {
		for i := 0; i < len(s); i++ {
			x := at + int64(i) - off
			if x >= 0 && x < int64(n) {
				p[x] = s[i]
			}
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

var errBadSector = errors.New("bad sector")

// failReader fails reads that touch [from, ∞).
type failReader struct {
	r    io.ReaderAt
	from int64
}

func (f failReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.from {
		return 0, errBadSector
	}
	return f.r.ReadAt(p, off)
}

// lazyFile opens the host file for every ReadAt (so walking a big tree
// holds no descriptors).
type lazyFile string

func (l lazyFile) ReadAt(p []byte, off int64) (int, error) {
	f, err := os.Open(string(l))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(p, off)
}

// hostFiles lists the regular files under root as Files whose guest path
// is the path relative to root, made absolute ("/" + rel), unless asHost.
func hostFiles(t testing.TB, root string, asHost bool) []File {
	t.Helper()
	var out []File
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable dirs of the host: skip
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		gp := p
		if !asHost {
			rel, _ := filepath.Rel(root, p)
			gp = "/" + filepath.ToSlash(rel)
		}
		out = append(out, File{Partition: "p1", FS: "ext4", Path: gp, Size: info.Size(), Mode: info.Mode(), Data: lazyFile(p)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

func feed(ctx context.Context, files []File) <-chan File {
	ch := make(chan File)
	go func() {
		defer close(ch)
		for _, f := range files {
			select {
			case ch <- f:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

func scanFiles(t testing.TB, r *Rules, files []File, opts ...Option) *Result {
	t.Helper()
	ctx := context.Background()
	res, err := Scan(ctx, r, feed(ctx, files), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}
