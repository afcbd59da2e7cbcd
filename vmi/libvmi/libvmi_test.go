//go:build libvmi

package libvmi

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// TestFileModeAgainstSnapshot opens a flat raw dump of the real guest with
// LibVMI's file mode and checks that (1) its physical reads equal vmscope's
// own snapshot reader page for page, and (2) vmscope's kernel discovery
// runs unchanged on the LibVMI backend and finds the guest's own banner.
func TestFileModeAgainstSnapshot(t *testing.T) {
	elf := guesttest.Path(t, guesttest.KASLR, guesttest.ELFDump)
	truth := guesttest.Load(t, guesttest.KASLR)
	snap, err := snapshot.Open(elf)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	raw := filepath.Join(t.TempDir(), "guest.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := snapshot.WriteRaw(f, snap); err != nil {
		t.Fatal(err)
	}
	f.Close()

	in, err := Open(raw, false)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	rng := rand.New(rand.NewSource(1))
	a, b := make([]byte, 4096), make([]byte, 4096)
	n := 0
	for _, r := range snap.Ranges() {
		for i := 0; i < 500 && r.Size >= 4096; i++ {
			off := int64(r.Start) + rng.Int63n(int64(r.Size/4096))*4096
			if _, err := snap.ReadAt(a, off); err != nil {
				t.Fatal(err)
			}
			if _, err := in.ReadAt(b, off); err != nil {
				t.Fatalf("libvmi read at %#x: %v", off, err)
			}
			if !bytes.Equal(a, b) {
				t.Fatalf("page at %#x differs between LibVMI and the snapshot reader", off)
			}
			n++
		}
	}
	t.Logf("%d pages equal", n)

	k, err := linux.Discover(context.Background(), in)
	if err != nil {
		t.Fatalf("discovery on the LibVMI backend: %v", err)
	}
	if k.Version != truth.Version {
		t.Errorf("banner %q, guest says %q", k.Version, truth.Version)
	}
}
