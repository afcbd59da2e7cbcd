package linux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/vmi"
)

// flatVirt is kernel virtual memory [base, base+len(b)).
type flatVirt struct {
	base vmi.VA
	b    []byte
}

func (f flatVirt) ReadVirt(p []byte, va vmi.VA) (int, error) {
	if va < f.base || uint64(va-f.base) >= uint64(len(f.b)) {
		return 0, &vmi.PageFault{VA: va, Level: 1}
	}
	n := copy(p, f.b[va-f.base:])
	if n < len(p) {
		return n, &vmi.PageFault{VA: va + vmi.VA(n), Level: 1}
	}
	return n, nil
}

const synthBase = vmi.VA(0xffffffff82000000)
const synthText = vmi.VA(0xffffffff81000000)

// buildKallsyms lays out a kallsyms table as scripts/kallsyms.c does
// (uncompressed: every token one byte), optionally with
// kallsyms_seqs_of_names, preceded by pad bytes of other data.
func buildKallsyms(n int, seqs bool) []byte {
	var b bytes.Buffer
	b.Write(make([]byte, 3<<20)) // room the scanner reads before the table
	align := func() {
		for b.Len()%8 != 0 {
			b.WriteByte(0)
		}
	}
	le := binary.LittleEndian
	syms := []string{"T_text"}
	for i := 1; i < n; i++ {
		syms = append(syms, fmt.Sprintf("tsym_%05d", i))
	}
	for i := range syms {
		b.Write(le.AppendUint32(nil, uint32(i*16)))
	}
	align()
	b.Write(le.AppendUint64(nil, uint64(synthText)))
	b.Write(le.AppendUint32(nil, uint32(n)))
	align()
	var names bytes.Buffer
	var markers []uint32
	for i, s := range syms {
		if i%256 == 0 {
			markers = append(markers, uint32(names.Len()))
		}
		names.WriteByte(byte(len(s)))
		names.WriteString(s)
	}
	b.Write(names.Bytes())
	align()
	for _, m := range markers {
		b.Write(le.AppendUint32(nil, m))
	}
	align()
	if seqs {
		for i := range syms {
			b.Write([]byte{byte(i >> 16), byte(i >> 8), byte(i)})
		}
		align()
	}
	var idx []uint16
	tableStart := b.Len()
	for i := range 256 {
		idx = append(idx, uint16(b.Len()-tableStart))
		switch {
		case i == 0:
			b.WriteString("zz")
		default:
			b.WriteByte(byte(i))
		}
		b.WriteByte(0)
	}
	align()
	for _, x := range idx {
		b.Write(le.AppendUint16(nil, x))
	}
	b.Write(make([]byte, 64))
	return b.Bytes()
}

func recoverFlat(b []byte) (*Symbols, error) {
	i := bytes.Index(b, tokenSig)
	if i < 0 {
		return nil, errors.New("no signature")
	}
	return recoverKallsyms(flatVirt{synthBase, b}, synthBase+vmi.VA(i), synthText)
}

func TestSyntheticKallsyms(t *testing.T) {
	for _, seqs := range []bool{false, true} {
		s, err := recoverFlat(buildKallsyms(1000, seqs))
		if err != nil {
			t.Fatalf("seqs %v: %v", seqs, err)
		}
		if len(s.List) != 1000 || s.List[999].Name != "sym_00999" || s.List[999].Addr != synthText+999*16 || s.List[999].Type != 't' {
			t.Fatalf("seqs %v: %d symbols, last %+v", seqs, len(s.List), s.List[len(s.List)-1])
		}
	}
	// a corrupt marker fails clearly
	b := buildKallsyms(1000, false)
	i := bytes.Index(b, tokenSig)
	binary.LittleEndian.PutUint32(b[i-64:], 0xdeadbeef)
	if _, err := recoverFlat(b); !errors.Is(err, ErrLayout) {
		t.Fatalf("corrupt table: %v", err)
	}
}

func FuzzKallsyms(f *testing.F) {
	f.Add(buildKallsyms(600, false)[3<<20-4096:], uint16(0), byte(0))
	f.Add(buildKallsyms(600, true)[3<<20-4096:], uint16(0), byte(0))
	f.Fuzz(func(t *testing.T, tail []byte, at uint16, v byte) {
		// the fuzzer mutates the table; the window before it stays zero
		b := append(make([]byte, 3<<20-4096), tail...)
		if int(at) < len(tail) {
			b[3<<20-4096+int(at)] ^= v
		}
		s, err := recoverFlat(b)
		if err != nil {
			return
		}
		var prev vmi.VA
		for i, y := range s.List {
			if y.Addr < prev || len(y.Name) > ksymNameLen {
				t.Fatalf("symbol %d %+v after %#x", i, y, uint64(prev))
			}
			prev = y.Addr
		}
		if a, ok := s.Addr("_text"); !ok || a != synthText {
			t.Fatalf("_text %#x", uint64(a))
		}
	})
}

func seedBTF(t testing.TB) []byte {
	u64 := &btf.Int{Name: "u64", Size: 8}
	lh := &btf.Struct{Name: "list_head", Size: 16}
	lh.Members = []btf.Member{{Name: "next", Type: &btf.Pointer{Target: lh}}, {Name: "prev", Type: &btf.Pointer{Target: lh}, Offset: 64}}
	ts := &btf.Struct{Name: "task_struct", Size: 64, Members: []btf.Member{
		{Name: "pid", Type: u64},
		{Name: "", Type: &btf.Union{Size: 16, Members: []btf.Member{{Name: "tasks", Type: lh}}}, Offset: 128},
	}}
	return marshalBTF(t, ts)
}

// marshalBTF encodes types as raw BTF.
func marshalBTF(t testing.TB, types ...btf.Type) []byte {
	t.Helper()
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestBTFField(t *testing.T) {
	spec, err := LoadBTF(seedBTF(t))
	if err != nil {
		t.Fatal(err)
	}
	k := &Kernel{Types: spec}
	if off, err := k.Field("task_struct", "tasks.prev"); err != nil || off != 24 {
		t.Fatalf("tasks.prev at %d, %v", off, err)
	}
	if _, err := k.Field("task_struct", "mm"); !errors.Is(err, ErrLayout) {
		t.Fatalf("missing member: %v", err)
	}
	if _, err := LoadBTF([]byte("not btf at all, not at all")); !errors.Is(err, vmi.ErrCorrupt) {
		t.Fatalf("garbage: %v", err)
	}
}

func FuzzBTF(f *testing.F) {
	f.Add(seedBTF(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		spec, err := LoadBTF(b)
		if err != nil {
			return
		}
		k := &Kernel{Types: spec}
		for _, p := range []string{"tasks", "tasks.next", "pid", "comm"} {
			k.Field("task_struct", p)
		}
	})
}

// FuzzKernelImage: a hostile bzImage header or payload gives an error, not
// a panic or an unbounded allocation.
func FuzzKernelImage(f *testing.F) {
	hdr := make([]byte, 0x400)
	copy(hdr[0x202:], "HdrS")
	hdr[0x1f1] = 1
	f.Add(append(append([]byte{}, hdr...), 0x02, 0x21, 0x4c, 0x18, 1, 2, 3, 4))
	f.Add(append(append([]byte{}, hdr...), 0x1f, 0x8b, 8, 0, 0, 0, 0, 0))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "k")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		ki, err := ReadKernelImage(p)
		if err == nil && ki.BTF == nil && ki.SystemMap == nil {
			t.Fatal("an image with nothing in it was accepted")
		}
	})
}

// FuzzPageCache: a walk through the page cache gives what a walk of the
// memory itself gives, whatever the tables hold.
func FuzzPageCache(f *testing.F) {
	tables := make([]byte, 0x5000)
	binary.LittleEndian.PutUint64(tables[0x1000+511*8:], 0x2000|3)
	binary.LittleEndian.PutUint64(tables[0x2000+510*8:], 0x3000|3)
	binary.LittleEndian.PutUint64(tables[0x3000:], 0x4000|3)
	binary.LittleEndian.PutUint64(tables[0x3008:], 0x200000|1<<7|3)
	binary.LittleEndian.PutUint64(tables[0x4000:], 0x1000|3)
	f.Add(tables, uint64(0x1000), uint16(0), false)
	f.Add(tables, uint64(0x1000), uint16(1), true)
	f.Fuzz(func(t *testing.T, mem []byte, root uint64, slot uint16, la57 bool) {
		m := memBytes(mem)
		cached := vmi.AddressSpace{Mem: &pageCache{r: m}, Root: vmi.PA(root), LA57: la57}
		direct := vmi.AddressSpace{Mem: m, Root: vmi.PA(root), LA57: la57}
		// every slot of the kernel image range, from slot on, twice
		for i := range 2 * 512 {
			va := vmi.VA(startKernelMap + (uint64(slot)+uint64(i))%512<<21 + uint64(i)*0x1000%(1<<21))
			pa1, s1, err1 := cached.Translate(va)
			pa2, s2, err2 := direct.Translate(va)
			if pa1 != pa2 || s1 != s2 || (err1 == nil) != (err2 == nil) || errors.Is(err1, vmi.ErrCorrupt) != errors.Is(err2, vmi.ErrCorrupt) {
				t.Fatalf("%#x: cached %#x %d %v, direct %#x %d %v", uint64(va), uint64(pa1), s1, err1, uint64(pa2), s2, err2)
			}
		}
	})
}

// FuzzDiscover: discovery of any memory ends within its budget, with a
// kernel whose image is in the kernel image range or an error; a spent
// budget is a *StopError that spent no more than it had.
func FuzzDiscover(f *testing.F) {
	// the layout of testdata/hostile-mem's kallsyms-tables.raw, small:
	// tables mapping the image range to one 2 MiB page holding a banner
	// and fake token tables
	seed := make([]byte, 4<<20)
	le := binary.LittleEndian
	le.PutUint64(seed[0x1000+511*8:], 0x2000|3)
	le.PutUint64(seed[0x2000+510*8:], 0x3000|3)
	for i := range 512 {
		le.PutUint64(seed[0x3000+8*i:], 0x200000|1<<7|3)
	}
	copy(seed[0x200000:], "Linux version 6.1.0-fuzz (fuzz@vmscope) #1 SMP\n\x00")
	for off := 0x200000 + 1024; off+1024 <= len(seed); off += 64 << 10 {
		for i := range 256 {
			seed[off+2*i] = byte(i) | byte(max(0, 1-i))<<7
			le.PutUint16(seed[off+512+2*i:], uint16(2*i))
		}
	}
	f.Add(seed, uint16(8), uint32(8<<20))
	f.Fuzz(func(t *testing.T, mem []byte, cands uint16, bytes uint32) {
		b := Budget{Bytes: int64(bytes%(64<<20)) + 1, Candidates: int(cands%64) + 1}
		k, err := Discover(context.Background(), memBytes(mem), WithBudget(b), WithoutBTF())
		var se *StopError
		switch {
		case err == nil:
			if k.Text < startKernelMap || k.ImageEnd <= k.Text || k.Spent.Bytes > b.Bytes || k.Spent.Candidates > b.Candidates {
				t.Fatalf("kernel text %#x..%#x, spent %+v of %+v", uint64(k.Text), uint64(k.ImageEnd), k.Spent, b)
			}
		case errors.As(err, &se):
			if !errors.Is(err, ErrBudget) || se.Spent.Bytes > b.Bytes || se.Spent.Candidates > b.Candidates || se.Phase == "" {
				t.Fatalf("%v: spent %+v of %+v", err, se.Spent, b)
			}
		}
	})
}
