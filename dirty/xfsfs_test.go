package dirty

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestXFSInode64Refused: the dirty view keeps 32-bit inode numbers, so a
// real XFS volume whose inode64 allocator placed inodes above 2^32
// (testdata/xfs/ino64.sh) is refused with ErrUnsupportedFS, the error
// naming the first such inode the kernel listed, by OpenFS and by
// BuildIndex.
func TestXFSInode64Refused(t *testing.T) {
	dir := filepath.Join(fixture.Root(), "testdata", "out-xfs-ino64")
	img := filepath.Join(dir, "xfs-ino64.qcow2")
	if _, err := os.Stat(img); err != nil {
		fixture.Missing(t, "%s (run bash testdata/xfs/ino64.sh)", img)
	}
	b, err := os.ReadFile(filepath.Join(dir, "inodes.txt"))
	if err != nil {
		t.Fatal(err)
	}
	first := uint64(math.MaxUint64)
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		ino, err := strconv.ParseUint(strings.Fields(sc.Text())[0], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if ino > math.MaxUint32 {
			first = min(first, ino)
		}
	}
	if first == math.MaxUint64 {
		t.Fatal("the fixture has no inode above 2^32")
	}
	_, v := openVol(t, img)
	_, err = OpenFS(v)
	want := fmt.Sprintf("XFS inode %d ", first)
	if !errors.Is(err, ErrUnsupportedFS) || !strings.Contains(err.Error(), want) {
		t.Fatalf("OpenFS: %v; want ErrUnsupportedFS naming %q", err, want)
	}
	if _, err := BuildIndex(context.Background(), v); !errors.Is(err, ErrUnsupportedFS) || !strings.Contains(err.Error(), want) {
		t.Errorf("BuildIndex: %v", err)
	}
}
