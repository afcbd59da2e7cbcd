package snapshot_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/memtest"
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
// dump of the same stopped guest, and checks with the memory conformance
// kit that every reader returns the same bytes at the same guest-physical
// addresses and the same holes: the kdump and LiME files hold the ELF
// dump's ranges, the raw file everything below its end; the kdump notes
// hold the ELF notes' vCPU state.
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
			if len(ranges) < 2 {
				t.Fatalf("ELF dump ranges %v: want holes between them", ranges)
			}
			t.Logf("ranges: %v", ranges)
			end := ranges[len(ranges)-1].End()
			if got := raw.Ranges(); len(got) != 1 || got[0].Start != 0 || got[0].End() != end {
				t.Errorf("raw ranges %v, want [0, %#x)", got, uint64(end))
			}
			// as many random pages and odd reads as before the kit, with the
			// kit's stride and the kernel image besides
			kernel := []memtest.Option{memtest.Region("kernel image", kernelImage(t, mode)), memtest.RandomPages(4000), memtest.OddReads(512)}
			for _, p := range []struct {
				name string
				s    *snapshot.Snapshot
				opts []memtest.Option
			}{
				{"kdump", kd, nil},
				{"lime", lime, []memtest.Option{memtest.NoCPUs("LiME saves none")}},
				{"raw", raw, []memtest.Option{memtest.Ranges(memtest.AInB), memtest.NoCPUs("raw saves none")}},
			} {
				t.Run(p.name, func(t *testing.T) {
					rep := memtest.Agree(t, elf, p.s, append(append(p.opts, memtest.Names("elf", p.name)), kernel...)...)
					if rep.Full || rep.NonZero < rep.Sampled/10 {
						t.Errorf("only %d of %d sampled pages hold data (full %v)", rep.NonZero, rep.Sampled, rep.Full)
					}
				})
			}
		})
	}
}

// gva2gpa returns the guest-physical addresses of the kernel symbols
// QEMU translated at dump time (HMP gva2gpa).
func gva2gpa(t testing.TB, mode string) map[string]uint64 {
	t.Helper()
	gpa := map[string]uint64{}
	b, err := os.ReadFile(guesttest.Path(t, mode, guesttest.GVA2GPA))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[2] != "-" {
			v, err := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 64)
			if err != nil {
				t.Fatalf("gva2gpa line %q", l)
			}
			gpa[f[0]] = v
		}
	}
	return gpa
}

// kernelImage is the kernel image in guest-physical memory, _text to _end.
func kernelImage(t testing.TB, mode string) vmi.Range {
	t.Helper()
	gpa := gva2gpa(t, mode)
	text, end := gpa["_text"], gpa["_end"]
	if text == 0 || end <= text {
		t.Fatalf("_text %#x _end %#x", text, end)
	}
	return vmi.Range{Start: vmi.PA(text), Size: end - text}
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

// recorder is a testing.TB that records failures instead of reporting
// them.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Logf(string, ...any)       {}
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }

// TestAgreeTellsBootsApart checks that the conformance kit is not
// satisfied by two real dumps of the same memory layout from different
// boots (KASLR on and off): it must find bytes and registers that differ.
func TestAgreeTellsBootsApart(t *testing.T) {
	a := open(t, guesttest.Path(t, guesttest.KASLR, guesttest.ELFDump))
	b := open(t, guesttest.Path(t, guesttest.NoKASLR, guesttest.KdumpDump))
	r := &recorder{TB: t}
	memtest.Agree(r, a, b, memtest.OddReads(0))
	var bytes, cpu bool
	for _, e := range r.errs {
		bytes = bytes || strings.Contains(e, "differs")
		cpu = cpu || strings.Contains(e, "vCPU 0: RIP")
	}
	if !bytes || !cpu {
		t.Errorf("two boots: byte differences found %v, RIP difference found %v; failures %q", bytes, cpu, r.errs)
	}
}
