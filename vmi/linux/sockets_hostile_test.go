package linux

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

var (
	guestTypesOnce sync.Once
	guestTypes     *btf.Spec
	guestTypesErr  error
)

// guestBTF is the BTF of the fixture guest's kernel (Debian 6.1), from its
// dump: hostile memory is laid out with the real kernel's layouts.
func guestBTF(t testing.TB) *btf.Spec {
	t.Helper()
	p := guesttest.Path(t, guesttest.KASLR, guesttest.KdumpDump)
	guestTypesOnce.Do(func() {
		s, err := snapshot.Open(p)
		if err != nil {
			guestTypesErr = err
			return
		}
		defer s.Close()
		k, err := Discover(context.Background(), s, WithCPUs(s.CPUs()))
		if err != nil {
			guestTypesErr = err
			return
		}
		guestTypes = k.Types
	})
	if guestTypesErr != nil {
		t.Fatal(guestTypesErr)
	}
	return guestTypes
}

// realLayout turns a hostile kernel into one with the guest kernel's BTF
// and the given symbols (each at hostileBase+offset).
func realLayout(t *testing.T, syms map[string]uint64) *hostileKernel {
	h := newHostileKernel(t)
	h.Types = guestBTF(t)
	var l []Symbol
	for n, off := range syms {
		l = append(l, Symbol{Addr: hostileBase + vmi.VA(off), Type: 'D', Name: n})
	}
	h.Symbols = newSymbols(l)
	return h
}

func (h *hostileKernel) off(t *testing.T, typ, path string) vmi.VA {
	t.Helper()
	o, err := h.Field(typ, path)
	if err != nil {
		t.Fatal(err)
	}
	return vmi.VA(o)
}

func (h *hostileKernel) bytes(va vmi.VA, b []byte) {
	copy(h.mem[hostilePA+uint64(va-hostileBase):], b)
}

func (h *hostileKernel) u32(va vmi.VA, v uint32) {
	binary.LittleEndian.PutUint32(h.mem[hostilePA+uint64(va-hostileBase):], v)
}

// within runs fn and fails the test if it has not returned in 20 s.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not end", what)
	}
}

// The layout of hostileSockets, as offsets from hostileBase.
const (
	hi, ut                = 0x100, 0x200
	ehash, lhash, udpHash = 0x1000, 0x2000, 0x3000
	skA, skB              = 0x10000, 0x20000
)

// hostileSockets lays out tcp_hashinfo (4 established buckets, 1
// listening) and udp_table (1 slot) with two IPv4 sockets A and B chained
// A -> B -> A in established bucket 0.
func hostileSockets(t *testing.T) *hostileKernel {
	h := realLayout(t, map[string]uint64{"tcp_hashinfo": hi, "udp_table": ut})
	b := hostileBase
	h.put(b+hi+h.off(t, "inet_hashinfo", "ehash"), uint64(b+ehash))
	h.u32(b+hi+h.off(t, "inet_hashinfo", "ehash_mask"), 3)
	h.put(b+hi+h.off(t, "inet_hashinfo", "lhash2"), uint64(b+lhash))
	h.u32(b+hi+h.off(t, "inet_hashinfo", "lhash2_mask"), 0)
	h.put(b+ut+h.off(t, "udp_table", "hash"), uint64(b+udpHash))
	h.u32(b+ut+h.off(t, "udp_table", "mask"), 0)
	for i := vmi.VA(0); i < 4; i++ {
		h.put(b+ehash+8*i, 2*uint64(i)+1) // nulls: an odd value ends the chain
	}
	h.put(b+lhash+h.off(t, "inet_listen_hashbucket", "nulls_head"), 1)
	node := h.off(t, "sock_common", "skc_nulls_node")
	for i, sk := range []vmi.VA{b + skA, b + skB} {
		h.bytes(sk+h.off(t, "sock_common", "skc_family"), []byte{2, 0})
		h.bytes(sk+h.off(t, "sock_common", "skc_state"), []byte{1})
		h.bytes(sk+h.off(t, "sock_common", "skc_num"), []byte{byte(80 + i), 0})
		h.bytes(sk+h.off(t, "sock_common", "skc_rcv_saddr"), []byte{127, 0, 0, 1})
	}
	// bucket 0: A -> B -> A
	h.put(b+ehash, uint64(b+skA+node))
	h.put(b+skA+node, uint64(b+skB+node))
	h.put(b+skB+node, uint64(b+skA+node))
	return h
}

// TestHostileSockets lays out tcp_hashinfo and udp_table with the real
// kernel's layouts and chains made by the guest: a loop, a table size
// that would have the walk read gigabytes, buckets that cannot be read.
// Each ends in a problem naming the table, bucket and address, never a
// hang; the sockets before the fault are kept.
func TestHostileSockets(t *testing.T) {
	build := hostileSockets
	sockets := func(t *testing.T, h *hostileKernel) ([]Socket, []Problem) {
		var s []Socket
		var p []Problem
		var err error
		within(t, "the socket walk", func() { s, p, err = h.Sockets(context.Background()) })
		if err != nil {
			t.Fatal(err)
		}
		return s, p
	}
	node := func(t *testing.T, h *hostileKernel) vmi.VA { return h.off(t, "sock_common", "skc_nulls_node") }

	t.Run("cycle", func(t *testing.T) {
		h := build(t)
		socks, probs := sockets(t, h)
		if len(socks) != 2 || socks[0].Local.String() != "127.0.0.1:80" || socks[1].Local.String() != "127.0.0.1:81" {
			t.Errorf("sockets before the cycle: %+v", socks)
		}
		if len(probs) != 1 || probs[0].Where != "tcp established hash bucket 0" || vmi.VA(probs[0].Addr) != hostileBase+skA+node(t, h) ||
			!errors.Is(probs[0].Err, vmi.ErrCorrupt) || !strings.Contains(probs[0].Err.Error(), "cycle after 2 entries") {
			t.Errorf("problems %+v", probs)
		}
	})
	t.Run("self-loop", func(t *testing.T) {
		h := build(t)
		h.put(hostileBase+skA+node(t, h), uint64(hostileBase+skA+node(t, h)))
		socks, probs := sockets(t, h)
		if len(socks) != 1 || len(probs) != 1 || !errors.Is(probs[0].Err, vmi.ErrCorrupt) {
			t.Errorf("sockets %+v, problems %+v", socks, probs)
		}
	})
	t.Run("huge-mask", func(t *testing.T) {
		h := build(t)
		h.u32(hostileBase+hi+h.off(t, "inet_hashinfo", "ehash_mask"), 0xffffffff)
		before := h.BytesRead()
		socks, probs := sockets(t, h)
		if len(socks) != 0 || len(probs) != 1 || probs[0].Where != "tcp established hash" || vmi.VA(probs[0].Addr) != hostileBase+ehash ||
			!errors.Is(probs[0].Err, vmi.ErrCorrupt) || !strings.Contains(probs[0].Err.Error(), "4294967296 buckets") {
			t.Errorf("sockets %+v, problems %+v", socks, probs)
		}
		if n := h.BytesRead() - before; n > 1<<20 {
			t.Errorf("read %d bytes for a refused table", n)
		}
	})
	t.Run("unreadable", func(t *testing.T) {
		h := build(t)
		nowhere := vmi.VA(0xffffffffbfe00000) // in the image range, not mapped
		h.put(hostileBase+hi+h.off(t, "inet_hashinfo", "ehash"), uint64(nowhere))
		h.put(hostileBase+skB+node(t, h), uint64(nowhere)) // never reached now
		h.put(hostileBase+udpHash+h.off(t, "udp_hslot", "head"), uint64(hostileBase+skA+h.off(t, "sock_common", "skc_node")))
		h.put(hostileBase+skA+h.off(t, "sock_common", "skc_node"), uint64(nowhere+8))
		socks, probs := sockets(t, h)
		var where []string
		for _, p := range probs {
			where = append(where, p.Where)
		}
		// the buckets; the second udp socket, then its next pointer
		if len(probs) != 3 || where[0] != "tcp established hash buckets 0-3" || vmi.VA(probs[0].Addr) != nowhere ||
			where[1] != "udp hash bucket 0" || vmi.VA(probs[1].Addr) != nowhere+8-h.off(t, "sock_common", "skc_node") ||
			where[2] != "udp hash bucket 0" || vmi.VA(probs[2].Addr) != nowhere+8 {
			t.Errorf("problems %+v", probs)
		}
		if len(socks) != 1 || socks[0].Table != "udp" || socks[0].Proto != "udp" {
			t.Errorf("sockets %+v", socks)
		}
	})
}

// The layout of hostileDcache, as offsets from hostileBase.
const (
	task, fs, mnt, root, rootIno = 0x100000, 0x4000, 0x5000, 0x6000, 0x7000
	c1, c2                       = 0x8000, 0x9000
	names                        = 0xa000
)

// hostileDcache lays out init_task's fs_struct, its root mount (no child
// mounts) and root directory dentry with two negative children a and b
// whose d_child list loops: root -> a -> b -> a.
func hostileDcache(t *testing.T) *hostileKernel {
	h := realLayout(t, map[string]uint64{"init_task": task})
	b := hostileBase
	h.put(b+task+h.off(t, "task_struct", "fs"), uint64(b+fs))
	h.put(b+fs+h.off(t, "fs_struct", "root.mnt"), uint64(b+mnt+h.off(t, "mount", "mnt")))
	h.put(b+fs+h.off(t, "fs_struct", "root.dentry"), uint64(b+root))
	mounts := b + mnt + h.off(t, "mount", "mnt_mounts")
	h.put(mounts, uint64(mounts)) // no child mounts
	h.put(b+root+h.off(t, "dentry", "d_inode"), uint64(b+rootIno))
	h.bytes(b+rootIno+h.off(t, "inode", "i_mode"), []byte{0xed, 0x41}) // 040755
	h.bytes(b+names, []byte("/\x00a\x00b\x00"))
	for i, d := range []vmi.VA{b + root, b + c1, b + c2} {
		h.u32(d+h.off(t, "dentry", "d_name.len"), 1)
		h.put(d+h.off(t, "dentry", "d_name.name"), uint64(b+names+vmi.VA(2*i)))
		h.put(d+h.off(t, "dentry", "d_hash.pprev"), 1)
	}
	sub, child := h.off(t, "dentry", "d_subdirs"), h.off(t, "dentry", "d_child")
	// root's children: c1 -> c2 -> c1 -> ..., never back to the head
	h.put(b+root+sub, uint64(b+c1+child))
	h.put(b+c1+child, uint64(b+c2+child))
	h.put(b+c2+child, uint64(b+c1+child))
	return h
}

// TestHostileDcache lays out init_task's fs_struct, its root mount and
// root dentry with the real kernel's layouts, and children lists made by
// the guest: a loop in d_subdirs, a name longer than NAME_MAX. Each
// lookup ends in an error naming the dentry, never a hang.
func TestHostileDcache(t *testing.T) {
	build := hostileDcache
	lookup := func(t *testing.T, h *hostileKernel, p string) error {
		var err error
		within(t, "the dentry cache lookup", func() { _, err = h.LookupCached(context.Background(), 0, p) })
		return err
	}
	t.Run("cycle", func(t *testing.T) {
		h := build(t)
		err := lookup(t, h, "/zz")
		if !errors.Is(err, vmi.ErrCorrupt) || !strings.Contains(err.Error(), "children of dentry") || !strings.Contains(err.Error(), "cycle") {
			t.Errorf("lookup in a looping d_subdirs: %v", err)
		}
		// a name before the loop closes is found
		if err := lookup(t, h, "/b"); err != nil {
			t.Errorf("lookup of /b: %v", err)
		}
	})
	t.Run("long-name", func(t *testing.T) {
		h := build(t)
		h.u32(hostileBase+c1+h.off(t, "dentry", "d_name.len"), 100000)
		if err := lookup(t, h, "/b"); !errors.Is(err, vmi.ErrCorrupt) || !strings.Contains(err.Error(), "name of 100000 bytes") {
			t.Errorf("a name of 100000 bytes: %v", err)
		}
	})
	t.Run("stacked-mounts", func(t *testing.T) {
		// a child mount whose root is its own mountpoint would stack forever
		h := build(t)
		b := hostileBase
		const m2 = 0xb000
		mounts := b + mnt + h.off(t, "mount", "mnt_mounts")
		h.put(mounts, uint64(b+m2+h.off(t, "mount", "mnt_child")))
		h.put(b+m2+h.off(t, "mount", "mnt_child"), uint64(mounts))
		h.put(b+m2+h.off(t, "mount", "mnt_mountpoint"), uint64(b+root))
		h.put(b+m2+h.off(t, "mount", "mnt.mnt_root"), uint64(b+root))
		m2mounts := b + m2 + h.off(t, "mount", "mnt_mounts")
		h.put(m2mounts, uint64(mounts)) // its children: the same list again
		if err := lookup(t, h, "/b"); !errors.Is(err, vmi.ErrCorrupt) {
			t.Errorf("mounts stacked without end: %v", err)
		}
	})
}

// scribble writes the fuzzer's data over the first 0x30000 bytes of a
// hostile layout: each 10 bytes are an offset (2 bytes, scaled to 8-byte
// slots) and a 64-bit value, so the fuzzer rewrites pointers, counts and
// masks of the tables, sockets and dentries.
func scribble(h *hostileKernel, data []byte) {
	for ; len(data) >= 10; data = data[10:] {
		off := vmi.VA(binary.LittleEndian.Uint16(data)) * 8 % 0x30000
		h.put(hostileBase+off, binary.LittleEndian.Uint64(data[2:]))
	}
}

// seed is one rewrite of scribble: value v at offset off (8-aligned).
func seed(off uint64, v uint64) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(off/8))
	return binary.LittleEndian.AppendUint64(b, v)
}

// FuzzSockets walks the socket tables of a hostile layout rewritten by the
// fuzzer: the walk ends, keeps at most MaxSockets sockets of the known
// protocols, and names every problem.
func FuzzSockets(f *testing.F) {
	guestBTF(f) // once per fuzzing process, before the per-input timeout
	f.Add([]byte{})
	f.Add(seed(hi+16, 0xffffffff))                    // ehash_mask
	f.Add(seed(ehash, 0xffffffffbfe00000))            // bucket 0 points nowhere
	f.Add(seed(skB+104, uint64(hostileBase+skB+104))) // B's next is B (skc_nulls_node at 104)
	f.Fuzz(func(t *testing.T, data []byte) {
		h := hostileSockets(t)
		scribble(h, data)
		socks, probs, err := h.Sockets(context.Background())
		if err != nil {
			return // a layout error of the table itself, before any walk
		}
		if len(socks) > MaxSockets {
			t.Fatalf("%d sockets", len(socks))
		}
		for _, s := range socks {
			if s.Proto != "tcp" && s.Proto != "tcp6" && s.Proto != "udp" && s.Proto != "udp6" {
				t.Fatalf("socket %+v", s)
			}
		}
		for _, p := range probs {
			if p.Where == "" || p.Err == nil {
				t.Fatalf("problem %+v", p)
			}
		}
	})
}

// FuzzDcache looks paths up in a hostile dentry cache rewritten by the
// fuzzer: the lookup ends, and a dentry it returns has a name of at most
// NAME_MAX bytes.
func FuzzDcache(f *testing.F) {
	guestBTF(f)
	f.Add([]byte{})
	f.Add(seed(c1+32, 100000<<32))            // c1's name length (d_name at 32)
	f.Add(seed(root+160, 0xffffffffbfe00000)) // root's children nowhere (d_subdirs at 160)
	f.Fuzz(func(t *testing.T, data []byte) {
		h := hostileDcache(t)
		scribble(h, data)
		for _, p := range []string{"/a", "/b", "/a/b/c"} {
			d, err := h.LookupCached(context.Background(), 0, p)
			if err == nil && len(d.Name) > maxNameLen {
				t.Fatalf("%s: name of %d bytes", p, len(d.Name))
			}
		}
		root, err := h.fsRoot(0)
		if err != nil {
			return
		}
		kids, _ := h.CachedChildren(context.Background(), root)
		if len(kids) > MaxCachedChildren {
			t.Fatalf("%d children", len(kids))
		}
	})
}
