package fsfile

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"testing"
	"testing/fstest"
)

// TestCursor: Read and SeekIn over a ReadAt behave as an *os.File's: the
// whole content in pieces, io.EOF at the end, positions from each whence,
// negative positions and unknown whence refused.
func TestCursor(t *testing.T) {
	data := []byte("0123456789abcdef")
	r := bytes.NewReader(data)
	var c Cursor
	read := func(p []byte) (int, error) { return c.Read(p, int64(len(data)), r.ReadAt) }
	var got []byte
	buf := make([]byte, 5)
	for {
		n, err := read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil || n == 0 {
			t.Fatalf("Read = %d, %v", n, err)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %q", got)
	}
	for _, s := range []struct {
		off    int64
		whence int
		want   int64
		b      byte
	}{{3, io.SeekStart, 3, '3'}, {2, io.SeekCurrent, 6, '6'}, {-1, io.SeekEnd, 15, 'f'}} {
		pos, err := c.SeekIn(s.off, s.whence, int64(len(data)), "f")
		b := make([]byte, 1)
		n, _ := read(b)
		if err != nil || pos != s.want || n != 1 || b[0] != s.b {
			t.Errorf("SeekIn(%d, %d) = %d, %v; read %q", s.off, s.whence, pos, err, b[:n])
		}
	}
	if pos, err := c.SeekIn(100, io.SeekStart, int64(len(data)), "f"); err != nil || pos != 100 {
		t.Errorf("past the end: %d, %v", pos, err)
	} else if n, err := read(buf); n != 0 || err != io.EOF {
		t.Errorf("read past the end: %d, %v", n, err)
	}
	for _, w := range [][2]int64{{-1, io.SeekStart}, {-200, io.SeekEnd}, {0, 7}} {
		if _, err := c.SeekIn(w[0], int(w[1]), int64(len(data)), "f"); !errors.Is(err, fs.ErrInvalid) {
			t.Errorf("SeekIn(%d, %d): %v", w[0], w[1], err)
		}
	}
}

// TestDir: entries handed out n at a time then io.EOF, all that is left
// with n <= 0, the listing read once; a listing error is returned and the
// next call lists again.
func TestDir(t *testing.T) {
	m := fstest.MapFS{"a": {}, "b": {}, "c": {}}
	lists := 0
	list := func() ([]fs.DirEntry, error) {
		lists++
		if lists == 1 {
			return nil, errors.New("transient")
		}
		return m.ReadDir(".")
	}
	var d Dir
	if _, err := d.ReadDir(2, list); err == nil || err.Error() != "transient" {
		t.Fatalf("first listing: %v", err)
	}
	var names []string
	for {
		ents, err := d.ReadDir(2, list)
		if err == io.EOF {
			break
		}
		if err != nil || len(ents) == 0 || len(ents) > 2 {
			t.Fatalf("ReadDir(2) = %v, %v", ents, err)
		}
		for _, e := range ents {
			names = append(names, e.Name())
		}
	}
	if rest, err := d.ReadDir(0, list); len(rest) != 0 || err != nil {
		t.Errorf("ReadDir(0) at the end = %v, %v", rest, err)
	}
	if len(names) != 3 || names[0] != "a" || names[2] != "c" || lists != 2 {
		t.Errorf("names %v after %d listings", names, lists)
	}
	var d2 Dir
	if all, err := d2.ReadDir(-1, list); len(all) != 3 || err != nil {
		t.Errorf("ReadDir(-1) = %v, %v", all, err)
	}
}
