package qemu

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmerr"
)

// Answers of QEMU 7.2 (a 4.5 GiB pc guest on a shared memfd backing).
const (
	seedRAMBlock = `              Block Name    PSize              Offset               Used              Total
                      m0    4 KiB  0x0000000000000000 0x0000000120000000 0x0000000120000000
   0000:00:02.0/vga.vram    4 KiB  0x0000000120080000 0x0000000001000000 0x0000000001000000
    /rom@etc/acpi/tables    4 KiB  0x00000001210c0000 0x0000000000020000 0x0000000000200000
                 pc.bios    4 KiB  0x0000000120000000 0x0000000000040000 0x0000000000040000
`
	seedMtree = `FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): m0
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000c9fff (prio 0, rom): m0 @00000000000c0000
  00000000000ca000-00000000000ccfff (prio 0, ram): m0 @00000000000ca000 KVM
  0000000000100000-00000000bfffffff (prio 0, ram): m0 @0000000000100000
  00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram
  00000000febf0400-00000000febf041f (prio 0, i/o): vga ioports remapped
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000015fffffff (prio 0, ram): m0 @00000000c0000000

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan

FlatView #3
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000000bffff (prio 0, ram): m0
`
	seedMaps = `556de3f32000-556de4339000 r--p 00000000 fe:00 10166314                   /usr/bin/qemu-system-x86_64
556df2c7b000-556df3d85000 rw-p 00000000 00:00 0                          [heap]
7f600bfff000-7f612bfff000 rw-s 00000000 00:01 1131                       /memfd:memory-backend-memfd (deleted)
7f612c000000-7f616bfff000 rwxp 00000000 00:00 0 
7f6171400000-7f6171440000 rw-p 00000000 00:00 0 
`
)

func TestParseLayout(t *testing.T) {
	segs, err := parseFlatView(seedMtree)
	if err != nil {
		t.Fatal(err)
	}
	want := []flatSeg{
		{0, 0xa0000, false, "m0", 0},
		{0xc0000, 0xa000, true, "m0", 0xc0000},
		{0xca000, 0x3000, false, "m0", 0xca000},
		{0x100000, 0xbff00000, false, "m0", 0x100000},
		{0xfd000000, 0x1000000, false, "vga.vram", 0},
		{0xfffc0000, 0x40000, true, "pc.bios", 0},
		{0x100000000, 0x60000000, false, "m0", 0xc0000000},
	}
	if len(segs) != len(want) {
		t.Fatalf("%d segments: %+v", len(segs), segs)
	}
	for i := range want {
		if segs[i] != want[i] {
			t.Errorf("segment %d: %+v, want %+v", i, segs[i], want[i])
		}
	}
	bl, err := parseRAMBlocks(seedRAMBlock)
	if err != nil {
		t.Fatal(err)
	}
	if len(bl) != 4 || bl[0] != (ramBlock{"m0", 4096, 0, 0x120000000, 0x120000000}) || bl[1].Name != "0000:00:02.0/vga.vram" || bl[2].Used != 0x20000 || bl[2].Total != 0x200000 {
		t.Errorf("blocks %+v", bl)
	}
	maps, err := parseMaps([]byte(seedMaps))
	if err != nil {
		t.Fatal(err)
	}
	m := maps[2]
	if !m.Shared() || m.Size() != 0x120000000 || m.Inode != 1131 || m.Major != 0 || m.Minor != 1 || m.Path != "/memfd:memory-backend-memfd (deleted)" || !maps[3].Exec() {
		t.Errorf("maps %+v", maps)
	}
	// placing: RAM above 4 GiB at the memfd mapping; the TCG code buffer
	// (rwxp) is never a RAM block; a mapping of no block's size is refused
	if _, err := placeSegment(want[6], 0x7f600bfff000+0xc0000000, maps, bl); err != nil {
		t.Error(err)
	}
	if _, err := placeSegment(want[3], 0x7f612c000000, maps, bl); !errors.Is(err, ErrLayout) {
		t.Errorf("segment in the code buffer: %v", err)
	}
	if _, err := placeSegment(want[3], 0x556df2c7b000, maps, bl); !errors.Is(err, ErrLayout) {
		t.Errorf("segment in the heap: %v", err)
	}
	if _, err := placeSegment(want[6], 0x7f600bfff000+0xd0000000, maps, bl); !errors.Is(err, ErrLayout) {
		t.Errorf("segment past its mapping: %v", err)
	}
	hva, name, ok, err := parseGPA2HVA("Host virtual address for 0x100000 (m0) is 0x7f600c0ff000\r\n")
	if err != nil || !ok || hva != 0x7f600c0ff000 || name != "m0" {
		t.Errorf("gpa2hva: %#x %q %v %v", hva, name, ok, err)
	}
	if _, _, ok, err := parseGPA2HVA("Memory at address 0xa0000 is not RAM\r\n"); ok || err != nil {
		t.Errorf("gpa2hva of a hole: %v %v", ok, err)
	}
	b, err := parseXP("0000000000100000: 0x0807060504030201 0x0000000000000010\r\n", 0x100000, 2)
	if err != nil || b[0] != 1 || b[7] != 8 || b[8] != 0x10 || len(b) != 16 {
		t.Errorf("xp: % x %v", b, err)
	}
	// errors name the structure and the offset of the line
	_, err = parseMaps([]byte("00400000-00300000 r--p 0 00:00 0\n"))
	var fe *vmerr.FormatError
	if !errors.As(err, &fe) || fe.Offset != 0 || !strings.Contains(err.Error(), "mapping") {
		t.Errorf("bad mapping: %v", err)
	}
	_, err = parseRAMBlocks("Block Name PSize Offset Used Total\nx 4 KiB 0x0 0x20 0x10\n")
	if !errors.As(err, &fe) || fe.Offset != 35 {
		t.Errorf("used > total: %v", err)
	}
}

func FuzzParseFlatView(f *testing.F) {
	f.Add(seedMtree)
	f.Add(strings.Replace(seedMtree, "000000015fffffff", "0000000000000001", 1))
	f.Fuzz(func(t *testing.T, s string) {
		segs, err := parseFlatView(s)
		if err != nil {
			return
		}
		var end uint64
		for i, g := range segs {
			if g.Size == 0 || g.Start+g.Size-1 < g.Start || (i > 0 && g.Start < end) {
				t.Fatalf("segment %d %+v after end %#x", i, g, end)
			}
			end = g.Start + g.Size
		}
	})
}

func FuzzParseRAMBlocks(f *testing.F) {
	f.Add(seedRAMBlock)
	f.Fuzz(func(t *testing.T, s string) {
		bl, err := parseRAMBlocks(s)
		if err != nil {
			return
		}
		for _, b := range bl {
			if b.Used > b.Total || b.PageSize == 0 {
				t.Fatalf("block %+v", b)
			}
		}
	})
}

func FuzzParseMaps(f *testing.F) {
	f.Add([]byte(seedMaps))
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := parseMaps(b)
		if err != nil {
			return
		}
		for i, m := range ms {
			if m.End <= m.Start || (i > 0 && ms[i-1].End > m.Start) || len(m.Perms) != 4 {
				t.Fatalf("mapping %d %+v", i, m)
			}
		}
	})
}

func FuzzParseHMPRegisters(f *testing.F) {
	f.Add(seedRegisters)
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := parseHMPRegisters(s)
		if err != nil {
			return
		}
		if len(cpus) == 0 || len(cpus) > maxHMPCPUs {
			t.Fatalf("%d cpus", len(cpus))
		}
		for i, c := range cpus {
			if c.ID != i || !c.HasGPRs || !c.HasControl {
				t.Fatalf("cpu %d: %+v", i, c)
			}
		}
	})
}

// seedRegisters is HMP "info registers -a" of QEMU 7.2 (TCG), two vCPUs.
const seedRegisters = `
CPU#0
RAX=0000000000000000 RBX=ffff895c41f1b000 RCX=000000000000001a RDX=ffff895c41efcda0
RSI=0000000000000000 RDI=0000000000000001 RBP=ffff895c41f69960 RSP=ffffca54805eb8f0
R8 =0000000000000000 R9 =0000000002000000 R10=0000000000000000 R11=0000000000000000
R12=ffff895c41eb5b00 R13=ffff895c409cac80 R14=0000000000000006 R15=0000000000000001
RIP=ffffffffaadf30e7 RFL=00000087 [--S--PC] CPL=0 II=0 A20=1 SMM=0 HLT=0
ES =0000 0000000000000000 00000000 00000000
CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]
SS =0018 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]
DS =0000 0000000000000000 00000000 00000000
FS =0000 00000000020403c0 00000000 00000000
GS =0000 ffff895c9b400000 00000000 00000000
LDT=0000 0000000000000000 00000000 00008200 DPL=0 LDT
TR =0040 fffffe0000003000 00004087 00008900 DPL=0 TSS64-avl
GDT=     fffffe0000001000 0000007f
IDT=     fffffe0000000000 00000fff
CR0=80050033 CR2=0000000002055a88 CR3=0000000101e3e000 CR4=000006b0
DR0=0000000000000000 DR1=0000000000000000 DR2=0000000000000000 DR3=0000000000000000 
DR6=00000000ffff0ff0 DR7=0000000000000400
EFER=0000000000000d01
FCW=037f FSW=0000 [ST=0] FTW=00 MXCSR=00001f80
XMM00=ff0000ffff0000ff 000000000000ff00 XMM01=2525252525252525 2525252525252525

CPU#1
RAX=0000000000000001 RBX=0000000000000002 RCX=0000000000000003 RDX=0000000000000004
RSI=0000000000000005 RDI=0000000000000006 RBP=0000000000000007 RSP=0000000000000008
R8 =0000000000000009 R9 =000000000000000a R10=000000000000000b R11=000000000000000c
R12=000000000000000d R13=000000000000000e R14=000000000000000f R15=0000000000000010
RIP=0000000000401000 RFL=00000246 [---Z-P-] CPL=3 II=0 A20=1 SMM=0 HLT=0
CS =0033 0000000000000000 ffffffff 00a0fb00 DPL=3 CS64 [-RA]
GS =0000 00007f0000001000 00000000 00000000
CR0=80050033 CR2=0000000000000000 CR3=0000000002000000 CR4=000006b0
EFER=0000000000000d01
`

func TestParseHMPRegisters(t *testing.T) {
	cpus, err := parseHMPRegisters(seedRegisters)
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) != 2 {
		t.Fatalf("%d cpus", len(cpus))
	}
	c := cpus[0]
	if c.RIP != 0xffffffffaadf30e7 || c.RSP != 0xffffca54805eb8f0 || c.R8 != 0 || c.R9 != 0x2000000 || c.RFLAGS != 0x87 ||
		c.CR3 != 0x101e3e000 || c.CR0 != 0x80050033 || c.CR4 != 0x6b0 || c.EFER != 0xd01 || c.GSBase != 0xffff895c9b400000 ||
		c.FSBase != 0x20403c0 || c.CS.Selector != 0x10 || c.CS.Flags != 0xa09b00 || c.TR.Base != 0xfffffe0000003000 ||
		c.GDT.Base != 0xfffffe0000001000 || c.GDT.Limit != 0x7f || !c.LongMode() || c.HasKernelGSBase {
		t.Errorf("cpu 0: %+v", c)
	}
	d := cpus[1]
	if d.ID != 1 || d.RAX != 1 || d.R15 != 0x10 || d.R9 != 0xa || d.CS.Selector&3 != 3 || d.CR3 != 0x2000000 {
		t.Errorf("cpu 1: %+v", d)
	}
	for _, bad := range []string{"", "CPU#1\nRIP=0\n", "CPU#0\nRIP=zz\n", strings.Replace(seedRegisters, "CR3=0000000101e3e000", "", 1)} {
		if _, err := parseHMPRegisters(bad); !errors.Is(err, ErrMonitor) {
			t.Errorf("%.40q: %v, want ErrMonitor", bad, err)
		}
	}
}
