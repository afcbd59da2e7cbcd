package control_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/control"
)

// xp reads n bytes of guest-physical memory through QEMU's own monitor
// (HMP xp), the reference the writes are checked against.
func xp(t *testing.T, ctx context.Context, ref *qemu.QMP, pa vmi.PA, n int) []byte {
	t.Helper()
	out, err := ref.HMP(ctx, fmt.Sprintf("xp /%dxb %#x", n, uint64(pa)))
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	for _, line := range strings.Split(out, "\n") {
		_, vals, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		for _, v := range strings.Fields(vals) {
			x, err := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 8)
			if err != nil {
				t.Fatalf("xp line %q: %v", line, err)
			}
			b = append(b, byte(x))
		}
	}
	if len(b) != n {
		t.Fatalf("xp gave %d bytes, want %d:\n%s", len(b), n, out)
	}
	return b
}

var hmpReg = regexp.MustCompile(`\b(RAX|R15|RIP|CR3)=([0-9a-f]+)`)

func infoRegs(t *testing.T, ctx context.Context, ref *qemu.QMP) map[string]uint64 {
	t.Helper()
	out, err := ref.HMP(ctx, "info registers")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	for _, x := range hmpReg.FindAllStringSubmatch(out, -1) {
		m[x[1]], _ = strconv.ParseUint(x[2], 16, 64)
	}
	if len(m) != 4 {
		t.Fatalf("info registers: %v", m)
	}
	return m
}

// TestControllerWrites writes guest-physical memory (across several
// packets) and registers of the paused fixture guest, checks each write
// against QEMU's own monitor, refuses writes outside RAM, puts every byte
// and register back before the guest runs again, and leaves the guest
// running.
func TestControllerWrites(t *testing.T) {
	sh := guesttest.BootShared(t)
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ref, err := qemu.DialQMP(ctx, sh.RefQMP)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	g, err := qemu.Open(ctx, sh.Spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := g.Close(context.Background()); err != nil {
			t.Error(err)
		}
		if st, err := ref.Status(ctx); err != nil || !st.Running {
			t.Errorf("guest after close: %+v %v", st, err)
		}
	}()
	c := control.New(g)
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}

	// memory: 5000 bytes (three packets of the stub's size) at 1 MiB + 3
	pa := vmi.PA(0x100003)
	orig := make([]byte, 5000)
	if _, err := g.ReadAt(orig, int64(pa)); err != nil {
		t.Fatal(err)
	}
	pat := make([]byte, len(orig))
	for i := range pat {
		pat[i] = byte(i*7+1) ^ orig[i]
	}
	if err := c.WritePhys(ctx, pat, pa); err != nil {
		t.Fatal(err)
	}
	if got := xp(t, ctx, ref, pa, 64); !bytes.Equal(got, pat[:64]) {
		t.Errorf("xp after the write: % x, want % x", got, pat[:64])
	}
	if got := xp(t, ctx, ref, pa+4936, 64); !bytes.Equal(got, pat[4936:]) {
		t.Errorf("xp of the last bytes: % x, want % x", got, pat[4936:])
	}
	back := make([]byte, len(pat))
	if _, err := g.ReadAt(back, int64(pa)); err != nil || !bytes.Equal(back, pat) {
		t.Errorf("read back through the stub differs (%v)", err)
	}
	if err := c.WritePhys(ctx, orig, pa); err != nil {
		t.Fatal(err)
	}
	if got := xp(t, ctx, ref, pa, 64); !bytes.Equal(got, orig[:64]) {
		t.Errorf("memory not restored: % x, want % x", got, orig[:64])
	}
	// outside RAM: a hole, and an overflow
	if r := g.Ranges(); len(r) > 1 {
		if err := c.WritePhys(ctx, []byte{1}, r[0].End()); !errors.Is(err, control.ErrOutside) {
			t.Errorf("write in a hole: %v", err)
		}
		if err := c.WritePhys(ctx, make([]byte, 16), r[0].End()-8); !errors.Is(err, control.ErrOutside) {
			t.Errorf("write across the end of a range: %v", err)
		}
	} else {
		t.Fatalf("memory map %v: want a hole", r)
	}
	if err := c.WritePhys(ctx, make([]byte, 2), vmi.PA(^uint64(0))); !errors.Is(err, control.ErrOutside) {
		t.Errorf("write past 2^64: %v", err)
	}

	// registers
	before, err := g.Regs(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	hb := infoRegs(t, ctx, ref)
	want := before
	want.RAX ^= 0x5a5a5a5a5a5a5a5a
	want.R15++
	want.CR3 = 0 // never written
	if err := c.SetRegs(ctx, 0, want); err != nil {
		t.Fatal(err)
	}
	h := infoRegs(t, ctx, ref)
	if h["RAX"] != want.RAX || h["R15"] != want.R15 || h["RIP"] != hb["RIP"] || h["CR3"] != hb["CR3"] {
		t.Errorf("info registers after SetRegs: %x, want RAX %x R15 %x RIP %x CR3 %x", h, want.RAX, want.R15, hb["RIP"], hb["CR3"])
	}
	if err := c.SetRegs(ctx, 0, before); err != nil {
		t.Fatal(err)
	}
	if h := infoRegs(t, ctx, ref); h["RAX"] != hb["RAX"] || h["R15"] != hb["R15"] {
		t.Errorf("registers not restored: %x, want %x", h, hb)
	}
	if err := c.SetRegs(ctx, 0, before); err != nil {
		t.Errorf("SetRegs with nothing to change: %v", err)
	}
	if err := c.SetRegs(ctx, 1, before); err == nil {
		t.Error("SetRegs of vCPU 1 of a 1-vCPU guest")
	}
}
