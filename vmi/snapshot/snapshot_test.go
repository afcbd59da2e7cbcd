package snapshot_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

func open(t testing.TB, path string) *snapshot.Snapshot {
	t.Helper()
	s, err := snapshot.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func write(t testing.TB, path string, fn func(io.Writer, vmi.Memory) error, m vmi.Memory) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := fn(f, m); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestGuestFormatsAgree converts QEMU's ELF dump of the fixture guest to
// raw and LiME with this package's writers, opens QEMU's own kdump-zlib
// dump of the same stopped guest, and checks that every reader returns the
// same bytes at the same guest-physical addresses and the same holes.
func TestGuestFormatsAgree(t *testing.T) {
	for _, mode := range guesttest.Modes {
		t.Run(mode, func(t *testing.T) {
			elf := open(t, guesttest.Path(t, mode, guesttest.ELFDump))
			kd := open(t, guesttest.Path(t, mode, guesttest.KdumpDump))
			dir := t.TempDir()
			write(t, filepath.Join(dir, "guest.raw"), snapshot.WriteRaw, elf)
			write(t, filepath.Join(dir, "guest.lime"), snapshot.WriteLiME, elf)
			raw := open(t, filepath.Join(dir, "guest.raw"))
			lime := open(t, filepath.Join(dir, "guest.lime"))

			for s, want := range map[*snapshot.Snapshot]snapshot.Format{elf: snapshot.ELF, kd: snapshot.Kdump, raw: snapshot.Raw, lime: snapshot.LiME} {
				if s.Format() != want {
					t.Errorf("format %v, want %v", s.Format(), want)
				}
			}
			ranges := elf.Ranges()
			if len(ranges) == 0 {
				t.Fatal("ELF dump has no ranges")
			}
			t.Logf("ranges: %v", ranges)
			for name, s := range map[string]*snapshot.Snapshot{"kdump": kd, "lime": lime} {
				if got := s.Ranges(); fmt.Sprint(got) != fmt.Sprint(ranges) {
					t.Errorf("%s ranges %v, want %v", name, got, ranges)
				}
			}
			end := ranges[len(ranges)-1].End()
			if got := raw.Ranges(); len(got) != 1 || got[0].Start != 0 || got[0].End() != end {
				t.Errorf("raw ranges %v, want [0, %#x)", got, uint64(end))
			}

			const page = 4096
			var addrs []vmi.PA
			for _, r := range ranges {
				addrs = append(addrs, r.Start, r.End()-page, r.End()-page/2) // the last straddles the end
				if r.Start >= page {
					addrs = append(addrs, r.Start-page/2) // straddles the start
				}
			}
			rng := rand.New(rand.NewPCG(1, 2))
			for range 4000 {
				r := ranges[rng.IntN(len(ranges))]
				addrs = append(addrs, r.Start+vmi.PA(rng.Uint64N(r.Size/page)*page))
			}
			// unaligned reads crossing pages
			for range 500 {
				r := ranges[rng.IntN(len(ranges))]
				addrs = append(addrs, r.Start+vmi.PA(rng.Uint64N(r.Size-page)))
			}
			want := make([]byte, page)
			got := make([]byte, page)
			nonzero := 0
			for _, a := range addrs {
				wn, werr := elf.ReadAt(want, int64(a))
				if wn < page {
					var he *vmi.HoleError
					if !errors.As(werr, &he) || !errors.Is(werr, vmi.ErrNotPresent) {
						t.Fatalf("elf at %#x: %d bytes, err %v, want a HoleError", uint64(a), wn, werr)
					}
				}
				if bytes.ContainsFunc(want[:wn], func(r rune) bool { return r != 0 }) {
					nonzero++
				}
				for name, s := range map[string]*snapshot.Snapshot{"kdump": kd, "lime": lime, "raw": raw} {
					clear(got)
					n, err := s.ReadAt(got, int64(a))
					if name == "raw" && a < end {
						// raw has no holes before its end: the hole reads as zeros
						n = min(n, wn)
						err = werr
					}
					if n != wn || !bytes.Equal(got[:n], want[:wn]) {
						t.Fatalf("%s at %#x: %d bytes (err %v), elf %d bytes (err %v); equal=%v", name, uint64(a), n, err, wn, werr, bytes.Equal(got[:min(n, wn)], want[:min(n, wn)]))
					}
					var he, whe *vmi.HoleError
					if (werr == nil) != (err == nil) || (werr != nil && (!errors.As(err, &he) || !errors.As(werr, &whe) || he.Addr != whe.Addr)) {
						t.Fatalf("%s at %#x: err %v, elf err %v", name, uint64(a), err, werr)
					}
				}
			}
			if nonzero < len(addrs)/10 {
				t.Errorf("only %d of %d sampled pages hold data", nonzero, len(addrs))
			}
			// past the end of memory
			for name, s := range map[string]*snapshot.Snapshot{"elf": elf, "kdump": kd, "lime": lime, "raw": raw} {
				if _, err := s.ReadAt(got[:8], int64(end)+1<<30); !errors.Is(err, vmi.ErrNotPresent) {
					t.Errorf("%s past the end: err %v, want ErrNotPresent", name, err)
				}
			}
		})
	}
}

var regRE = regexp.MustCompile(`\b(RIP|RSP|RAX|RBX|CR0|CR2|CR3|CR4|EFER)=([0-9a-f]+)`)

func hmpRegisters(t *testing.T, path string) map[string]uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	for _, g := range regRE.FindAllSubmatch(b, -1) {
		v, err := strconv.ParseUint(string(g[2]), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		m[string(g[1])] = v
	}
	return m
}

// TestGuestCPUs checks the vCPU state of the ELF and kdump notes against
// QEMU's own "info registers" of the stopped guest at dump time.
func TestGuestCPUs(t *testing.T) {
	for _, mode := range guesttest.Modes {
		t.Run(mode, func(t *testing.T) {
			regs := hmpRegisters(t, guesttest.Path(t, mode, guesttest.Registers))
			for _, file := range []string{guesttest.ELFDump, guesttest.KdumpDump} {
				cpus := open(t, guesttest.Path(t, mode, file)).CPUs()
				if len(cpus) != 1 {
					t.Fatalf("%s: %d CPUs, want 1", file, len(cpus))
				}
				c := cpus[0]
				if !c.HasGPRs || !c.HasControl || c.HasEFER {
					t.Errorf("%s: has GPRs %v control %v EFER %v", file, c.HasGPRs, c.HasControl, c.HasEFER)
				}
				if c.CR3 == 0 || c.PageTableRoot()%4096 != 0 {
					t.Errorf("%s: CR3 %#x", file, c.CR3)
				}
				if c.RIP < 0xffff800000000000 {
					t.Errorf("%s: RIP %#x not in kernel space", file, c.RIP)
				}
				if !c.LongMode() || c.LA57() != (mode == guesttest.LA57) {
					t.Errorf("%s: long mode %v LA57 %v (CR0 %#x CR4 %#x CS flags %#x)", file, c.LongMode(), c.LA57(), c.CR0, c.CR4, c.CS.Flags)
				}
				for name, got := range map[string]uint64{"RIP": c.RIP, "RSP": c.RSP, "RAX": c.RAX, "RBX": c.RBX, "CR0": c.CR0, "CR2": c.CR2, "CR3": c.CR3, "CR4": c.CR4} {
					if want, ok := regs[name]; !ok || got != want {
						t.Errorf("%s: %s = %#x, info registers says %#x", file, name, got, want)
					}
				}
			}
		})
	}
}
