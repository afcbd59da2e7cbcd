package watch

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/watch/watchtest"
)

// BenchmarkLibVMIFalseTriggers (bench/watch.sh) measures what LibVMI's
// per-page memory events would cost target-based watching: the 4 KiB
// pages holding the watched fields of the 10 files the benchmark loop
// never touches are covered with 8-byte write watchpoints (512 a page:
// QEMU's TCG reports which 8 bytes were written), the guest's file loop
// runs ($VMSCOPE_WATCH_FILES, 200), and every write on those pages is
// sorted into true triggers (it overlaps a watched field: LibVMI and TCG
// both stop) and false triggers (a neighbour: a VM exit and a round trip
// under LibVMI, a check inside QEMU under TCG). False triggers are
// reported per watched object (inode or dentry of a file) and by the slab
// cache, member and kernel function of the access. Then the same over
// $VMSCOPE_WATCH_IDLE (10 s) of an idle guest; then both again with read
// watchpoints (the plan watches i_size, i_mode and i_uid for reads too,
// so LibVMI would need read events on those pages) and a loop of
// $VMSCOPE_WATCH_READFILES (5) files.
func BenchmarkLibVMIFalseTriggers(b *testing.B) {
	n := envInt("VMSCOPE_WATCH_FILES", 200)
	l := watchtest.Boot(b, "")
	// thousands of watchpoints: no journal (it is rewritten for each), the
	// guest is thrown away at the end
	g, w := openKernel(b, l, qemu.WithoutJournal())
	ctx := context.Background()
	var paths []string
	for i := 100; i < 110; i++ {
		paths = append(paths, fmt.Sprintf("/mnt/data/bulk/f%03d", i))
	}
	x, err := New(ctx, g, w, paths, Options{})
	if err != nil {
		b.Fatal(err)
	}
	sl, err := newSlabs(w.K)
	if err != nil {
		b.Fatal(err)
	}
	// the watched ranges, and the object each page belongs to
	type object struct{ path, kind string }
	watchedAt := map[vmi.VA]vmi.Access{} // 8-byte slots overlapping a watched field: its accesses
	pageOwners := map[vmi.VA][]object{}
	for _, p := range paths {
		t := x.Targets()[p]
		if t == nil {
			b.Fatalf("%s not cached (the fixture warms it)", p)
		}
		for tr, f := range x.trapsOf(t) {
			kind := "inode"
			if strings.HasPrefix(f, "d_") {
				kind = "dentry"
			}
			for a := tr.Addr &^ 7; a < tr.Addr+vmi.VA(tr.Len); a += 8 {
				watchedAt[a] = watchedAt[a].Union(tr.Access)
			}
			pg := tr.Addr &^ 4095
			o := object{p, kind}
			dup := false
			for _, have := range pageOwners[pg] {
				dup = dup || have == o
			}
			if !dup {
				pageOwners[pg] = append(pageOwners[pg], o)
			}
		}
	}
	pageTraps := func(acc vmi.Access) []vmi.Trap {
		var traps []vmi.Trap
		for pg := range pageOwners {
			for a := pg; a < pg+4096; a += 8 {
				traps = append(traps, vmi.Watchpoint(a, 8, acc))
			}
		}
		return traps
	}
	fmt.Printf("%d watched objects on %d pages; 512 watchpoints of 8 bytes a page\n", 2*len(paths), len(pageOwners))
	if err := g.Resume(ctx); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	count := func(phase string, acc vmi.Access, run func()) {
		traps := pageTraps(acc)
		rctx, cancel := context.WithCancel(ctx)
		armed, done := make(chan struct{}), make(chan int, 1)
		byObject := map[string]int{}
		byNeighbour := map[string]int{}
		byCache := map[string]int{}
		truth := 0
		sym := NewSymbolizer(w.K.Symbols)
		go holdTraps(rctx, b, g, traps, armed, done, func(st vmi.Stop) {
			slot := st.Addr &^ 7
			if w := watchedAt[slot]; w.Read && acc.Read || w.Write && acc.Write {
				truth++
				return
			}
			// read while the guest is stopped: the slot's slab object
			where := sl.describe(slot)
			fn := "?"
			if regs, err := g.Regs(rctx, max(st.CPU, 0)); err == nil {
				fn, _, _ = sym.Lookup(vmi.VA(regs.RIP))
			}
			mu.Lock()
			for _, o := range pageOwners[slot&^4095] {
				byObject[o.path+" "+o.kind]++
			}
			byNeighbour[where.cache+" "+where.member+" by "+fn]++
			byCache[where.cache]++
			mu.Unlock()
		})
		<-armed
		start := time.Now()
		run()
		d := time.Since(start)
		cancel()
		stops := <-done
		false_ := stops - truth
		fmt.Printf("%s: %v, %d accesses on the watched pages: %d on watched fields, %d false triggers (%.1f/s; %.1f per watched object)\n",
			phase, d.Round(time.Millisecond), stops, truth, false_, float64(false_)/d.Seconds(), float64(false_)/float64(2*len(paths)))
		printTop("  per watched object (each access counts for every watched object on its page)", byObject, 20)
		printTop("  by neighbour's slab cache", byCache, 10)
		printTop("  by neighbour: slab cache, member written, function", byNeighbour, 15)
	}
	idle := time.Duration(envInt("VMSCOPE_WATCH_IDLE", 10)) * time.Second
	seq := 0
	for _, pass := range []struct {
		name  string
		acc   vmi.Access
		files int
	}{{"writes", vmi.Write, n}, {"reads", vmi.Read, envInt("VMSCOPE_WATCH_READFILES", 5)}} {
		seq++
		id := seq
		count(fmt.Sprintf("%s, loop of %d files", pass.name, pass.files), pass.acc, func() {
			if err := l.Send(fmt.Sprintf("bench %d 0 %d", pass.files, id)); err != nil {
				b.Fatal(err)
			}
			if err := l.WaitFor(fmt.Sprintf("=== BENCH DONE %d ===", id), 60*time.Minute); err != nil {
				b.Fatal(err)
			}
		})
		count(fmt.Sprintf("%s, idle %v", pass.name, idle), pass.acc, func() { time.Sleep(idle) })
	}
}

func printTop(title string, m map[string]int, k int) {
	keys := make([]string, 0, len(m))
	for s := range m {
		keys = append(keys, s)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	fmt.Println(title + ":")
	for i, s := range keys {
		if i == k {
			fmt.Printf("\t... %d more\n", len(keys)-k)
			break
		}
		fmt.Printf("\t%6d %s\n", m[s], s)
	}
}

// slabs names the slab object a direct-map address lies in: its page's
// struct page (vmemmap_base), the compound head, the slab's kmem_cache
// (name, object size), and the member of the object at the offset (for
// the caches of inodes and dentries).
type slabs struct {
	k                     *linux.Kernel
	vmemmap               vmi.VA
	pageSize              uint64
	compoundHead, slabOff uint64
	nameOff               uint64
	pgSlab                uint64
}

type slabWhere struct {
	cache  string
	member string
}

func newSlabs(k *linux.Kernel) (*slabs, error) {
	s := &slabs{k: k}
	va, ok := k.Symbols.Addr("vmemmap_base")
	if !ok {
		return nil, fmt.Errorf("no vmemmap_base")
	}
	v, err := k.ReadU64(va)
	if err != nil {
		return nil, err
	}
	s.vmemmap = vmi.VA(v)
	if s.pageSize, err = k.Sizeof("page"); err != nil {
		return nil, err
	}
	if s.compoundHead, err = k.Field("page", "compound_head"); err != nil {
		return nil, err
	}
	if s.slabOff, err = k.Field("slab", "slab_cache"); err != nil {
		if s.slabOff, err = k.Field("page", "slab_cache"); err != nil {
			return nil, err
		}
	}
	if s.nameOff, err = k.Field("kmem_cache", "name"); err != nil {
		return nil, err
	}
	if s.pgSlab, err = k.EnumValue("pageflags", "PG_slab"); err != nil {
		return nil, err
	}
	return s, nil
}

// objectTypes are the structs of the caches whose members are named.
var objectTypes = map[string]string{"ext4_inode_cache": "ext4_inode_info", "dentry": "dentry", "inode_cache": "inode"}

func (s *slabs) describe(va vmi.VA) slabWhere {
	k := s.k
	page := s.vmemmap + vmi.VA(uint64(va-k.PageOffset)>>12*s.pageSize)
	head := page
	if ch, err := k.ReadU64(page + vmi.VA(s.compoundHead)); err == nil && ch&1 != 0 {
		head = vmi.VA(ch - 1)
	}
	flags, err := k.ReadU64(head)
	if err != nil || flags&(1<<s.pgSlab) == 0 {
		return slabWhere{cache: "(not slab)"}
	}
	cache, err := k.ReadU64(head + vmi.VA(s.slabOff))
	if err != nil {
		return slabWhere{cache: "(unreadable slab)"}
	}
	np, _ := k.ReadU64(vmi.VA(cache) + vmi.VA(s.nameOff))
	name, _ := k.ReadString(vmi.VA(np), 64)
	size, err := k.ReadUint("kmem_cache", vmi.VA(cache), "size")
	if err != nil || size == 0 {
		return slabWhere{cache: name}
	}
	base := k.PageOffset + vmi.VA(uint64(head-s.vmemmap)/s.pageSize<<12)
	off := uint64(va-base) % size
	w := slabWhere{cache: name, member: fmt.Sprintf("+%#x", off)}
	if typ, ok := objectTypes[name]; ok {
		w.member = memberAt(k.Types, typ, off)
	}
	return w
}

// memberAt names the innermost member of struct typ at byte offset off.
func memberAt(spec *btf.Spec, typ string, off uint64) string {
	var st *btf.Struct
	if spec == nil || spec.TypeByName(typ, &st) != nil {
		return fmt.Sprintf("+%#x", off)
	}
	name := typ
	var t btf.Type = st
	for depth := 0; depth < 8; depth++ {
		var members []btf.Member
		switch c := btf.UnderlyingType(t).(type) {
		case *btf.Struct:
			members = c.Members
		case *btf.Union:
			members = c.Members
		default:
			return name
		}
		found := false
		for _, m := range members {
			mo := uint64(m.Offset.Bytes())
			sz, err := btf.Sizeof(m.Type)
			if err != nil || off < mo || off >= mo+uint64(sz) {
				continue
			}
			if m.Name != "" {
				name += "." + m.Name
			}
			off -= mo
			t = m.Type
			found = true
			break
		}
		if !found {
			return fmt.Sprintf("%s+%#x", name, off)
		}
	}
	return name
}
