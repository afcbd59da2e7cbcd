package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// testImage makes a 64 MiB qcow2 with qemu-img and qemu-io: 1 MiB written
// before the persistent bitmap b0 was added, then writes of data and of
// zeros that b0 records, and a backing file below part of it. It returns
// the image's path.
func testImage(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	img := filepath.Join(dir, "top.qcow2")
	fixture.Run(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
	fixture.Run(t, dir, "qemu-io", "-c", "write -P 0x5a 30M 3M", base)
	fixture.Run(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, img)
	fixture.Run(t, dir, "qemu-io", "-c", "write -P 0x11 0 1M", img)
	fixture.Run(t, dir, "qemu-img", "bitmap", "--add", img, "b0")
	fixture.Run(t, dir, "qemu-io", "-c", "write -P 0x22 5M 8k", "-c", "write -z 20M 1M",
		"-c", "write -P 0x33 40M 100k", "-c", "write -P 0x44 63M 1M", "-c", "write -P 0x55 31M 4k", img)
	return img
}

// serve exports img read-only with qemu-nbd on a unix socket (export
// "ex", the bitmap b0, the allocation depth) and returns the socket.
func serve(t testing.TB, img string, extra ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := append([]string{"-t", "-e", "8", "-k", sock, "-f", "qcow2", "-r", "-x", "ex"}, extra...)
	cmd := exec.Command(fixture.Tool(t, "qemu-nbd"), append(args, img)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("qemu-nbd did not listen: %s", stderr.String())
	return ""
}

func dial(t testing.TB, sock string, ctxs ...string) *Client {
	t.Helper()
	return dialOpts(t, sock, Options{Export: "ex", MetaContexts: ctxs})
}

func dialOpts(t testing.TB, sock string, o Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestReadMatchesQemuImg reads the whole export through the client, in
// reads of several sizes, and compares it with qemu-img convert -O raw of
// the same image.
func TestReadMatchesQemuImg(t *testing.T) {
	img := testImage(t)
	raw := filepath.Join(t.TempDir(), "ref.raw")
	fixture.Run(t, "", "qemu-img", "convert", "-O", "raw", img, raw)
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, serve(t, img))
	if c.Size() != int64(len(want)) || !c.ReadOnly() {
		t.Fatalf("size %d read-only %v, want %d true", c.Size(), c.ReadOnly(), len(want))
	}
	// One read of everything (split into pipelined requests)...
	got := make([]byte, len(want)+4096)
	n, err := c.ReadAt(got, 0)
	if n != len(want) || err != io.EOF {
		t.Fatalf("ReadAt whole: %d, %v; want %d, EOF", n, err, len(want))
	}
	if !bytes.Equal(got[:n], want) {
		t.Fatal("the export differs from qemu-img convert's copy")
	}
	// ...and odd reads across data, holes, zeros and the backing file,
	// concurrently.
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func(g int) {
			buf := make([]byte, 70001+g*4093)
			for off := int64(g * 977); off < int64(len(want)); off += int64(len(buf)) * 7 {
				n, err := c.ReadAt(buf, off)
				if err != nil && !(err == io.EOF && off+int64(n) == int64(len(want))) {
					errs <- fmt.Errorf("read at %d: %d, %v", off, n, err)
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- fmt.Errorf("read at %d differs", off)
					return
				}
			}
			errs <- nil
		}(g)
	}
	for g := 0; g < 8; g++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n, err := c.ReadAt(make([]byte, 10), int64(len(want))); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v", n, err)
	}
}

// nbdinfoMap is nbdinfo --map=CTX --json of the export.
func nbdinfoMap(t testing.TB, sock, ctx string) []Extent {
	t.Helper()
	out, err := exec.Command(fixture.Tool(t, "nbdinfo"), "--map="+ctx, "--json",
		"nbd+unix:///ex?socket="+sock).Output()
	if err != nil {
		t.Fatalf("nbdinfo --map=%s: %v", ctx, err)
	}
	var m []struct {
		Offset, Length int64
		Type           uint32
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	var ext []Extent
	for _, e := range m {
		ext = append(ext, Extent{e.Offset, e.Length, e.Type})
	}
	return ext
}

// TestBlockStatusMatchesNbdinfo compares the extents of the dirty bitmap,
// base:allocation and qemu:allocation-depth with nbdinfo --map (libnbd).
func TestBlockStatusMatchesNbdinfo(t *testing.T) {
	img := testImage(t)
	sock := serve(t, img, "-B", "b0", "-A")
	ctxs := []string{"qemu:dirty-bitmap:b0", "base:allocation", "qemu:allocation-depth"}
	c := dial(t, sock, ctxs...)
	for _, name := range ctxs {
		got, err := c.BlockStatus(context.Background(), name, 0, c.Size())
		if err != nil {
			t.Fatal(err)
		}
		want := nbdinfoMap(t, sock, name)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s:\n got %v\nwant %v", name, got, want)
		}
	}
	// The bitmap recorded exactly the writes after it was added (64 KiB
	// granularity of qemu-img bitmap --add).
	got, _ := c.BlockStatus(context.Background(), "qemu:dirty-bitmap:b0", 0, c.Size())
	var dirty []string
	for _, e := range got {
		if e.Flags&1 != 0 {
			dirty = append(dirty, fmt.Sprintf("%d+%d", e.Off>>10, e.Len>>10))
		}
	}
	if fmt.Sprint(dirty) != "[5120+64 20480+1024 31744+64 40960+128 64512+1024]" {
		t.Errorf("dirty KiB ranges %v", dirty)
	}
	// The extents kept are bounded: b0 splits into more than 3.
	if n := len(got); n <= 3 {
		t.Fatalf("b0 has %d extents; the bound test needs more than 3", n)
	}
	c3 := dialOpts(t, sock, Options{Export: "ex", MaxExtents: 3, MetaContexts: []string{"qemu:dirty-bitmap:b0"}})
	if ext, err := c3.BlockStatus(context.Background(), "qemu:dirty-bitmap:b0", 0, c3.Size()); !errors.Is(err, ErrTooManyExtents) || len(ext) != 3 {
		t.Errorf("3 extents at most: %d extents, %v", len(ext), err)
	}
	// A sub-range is clipped to what was asked.
	sub, err := c.BlockStatus(context.Background(), "qemu:dirty-bitmap:b0", 5<<20+4096, 8192)
	if err != nil || len(sub) != 1 || sub[0] != (Extent{5<<20 + 4096, 8192, 1}) {
		t.Errorf("sub-range: %v, %v", sub, err)
	}
}

// TestServerRefusals: an export, a context the server does not have.
func TestServerRefusals(t *testing.T) {
	img := testImage(t)
	sock := serve(t, img, "-B", "b0")
	ctx := context.Background()
	_, err := Dial(ctx, "unix", sock, Options{Export: "nope"})
	var se *ServerError
	if !errors.As(err, &se) || se.Code != repErrBit+6 {
		t.Errorf("unknown export: %v", err)
	}
	_, err = Dial(ctx, "unix", sock, Options{Export: "ex", MetaContexts: []string{"qemu:dirty-bitmap:other"}})
	if !errors.Is(err, ErrNoContext) {
		t.Errorf("missing bitmap: %v", err)
	}
	c := dial(t, sock)
	if _, err := c.BlockStatus(ctx, "base:allocation", 0, 1); !errors.Is(err, ErrNoContext) {
		t.Errorf("block status of a context not negotiated: %v", err)
	}
	// A read under a cancelled context sends nothing and says why; the
	// connection stays usable.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.ReadAtContext(cctx, make([]byte, 32<<20), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled read: %v", err)
	}
	if n, err := c.ReadAt(make([]byte, 1), 0); n != 1 || err != nil {
		t.Errorf("read after a cancelled one: %d, %v", n, err)
	}
}
