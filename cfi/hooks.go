package cfi

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// Caps on the ftrace record walk.
const (
	maxFtracePages   = 1 << 14
	maxFtraceRecords = 1 << 20
)

// enumerators returns the values of the named enumerators, looked up in
// every enum of the kernel's BTF (named or not: ftrace's record flags are
// an anonymous enum).
func (c *checker) enumerators(names ...string) (map[string]uint64, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]uint64{}
	if c.k.Types == nil {
		return nil, fmt.Errorf("no BTF: %w", vmerr.ErrNotPresent)
	}
	for t, err := range c.k.Types.All() {
		if err != nil {
			return nil, err
		}
		e, ok := t.(*btf.Enum)
		if !ok {
			continue
		}
		for _, v := range e.Values {
			if want[v.Name] {
				out[v.Name] = v.Value
			}
		}
		if len(out) == len(want) {
			return out, nil
		}
	}
	return nil, fmt.Errorf("BTF has no enumerators %v: %w", names, vmerr.ErrUnsupported)
}

// ftrace reports each ftrace_ops on ftrace_ops_list whose handler is
// outside core text or that sets FTRACE_OPS_FL_IPMODIFY, and each
// enabled ftrace record (ftrace_pages_start: struct ftrace_page, its
// struct dyn_ftrace records) with FTRACE_FL_IPMODIFY: a function whose
// calls an ftrace handler may send elsewhere.
func (c *checker) ftrace(ctx context.Context) (int, []Finding, error) {
	ops, err := FtraceOps(c.k)
	if err != nil && len(ops) == 0 {
		return 0, nil, err
	}
	if err != nil {
		c.problem("ftrace_ops_list", 0, err)
	}
	fl, err := c.enumerators("FTRACE_OPS_FL_IPMODIFY")
	if err != nil {
		return 0, nil, err
	}
	var out []Finding
	checked := 0
	for _, o := range ops {
		checked++
		var why []string
		if !c.m.InCore(o.Func) {
			why = append(why, "handler outside core kernel text")
		}
		if o.Flags&fl["FTRACE_OPS_FL_IPMODIFY"] != 0 {
			why = append(why, "IPMODIFY: the handler may redirect the traced functions")
		}
		if len(why) > 0 {
			out = append(out, c.m.newFinding(KindFtraceHook, o.Func, fmt.Sprintf("ftrace_ops %#x", uint64(o.Addr)),
				fmt.Sprintf("ftrace_ops on ftrace_ops_list (flags %#x, trampoline %#x): %s", o.Flags, uint64(o.Trampoline), joinWhy(why))))
		}
	}
	n, recs, err := c.ftraceRecords(ctx)
	if err != nil {
		c.problem("ftrace records", 0, err)
	}
	return checked + n, append(out, recs...), nil
}

func joinWhy(w []string) string {
	s := w[0]
	for _, x := range w[1:] {
		s += "; " + x
	}
	return s
}

// ftraceRecords walks the ftrace pages and reports the enabled records
// with FTRACE_FL_IPMODIFY.
func (c *checker) ftraceRecords(ctx context.Context) (int, []Finding, error) {
	k := c.k
	v, ok := k.Symbols.Addr("ftrace_pages_start")
	if !ok {
		return 0, nil, fmt.Errorf("no ftrace_pages_start: %w", vmerr.ErrNotPresent)
	}
	fl, err := c.enumerators("FTRACE_FL_IPMODIFY", "FTRACE_FL_ENABLED")
	if err != nil {
		return 0, nil, err
	}
	recSize, err := k.Sizeof("dyn_ftrace")
	if err != nil {
		return 0, nil, err
	}
	ipOff, err1 := k.Field("dyn_ftrace", "ip")
	flOff, err2 := k.Field("dyn_ftrace", "flags")
	flSize, err3 := k.FieldSize("dyn_ftrace", "flags")
	if err := firstErr(err1, err2, err3); err != nil {
		return 0, nil, err
	}
	if recSize == 0 || recSize > 256 || flSize > 8 {
		return 0, nil, fmt.Errorf("struct dyn_ftrace of %d bytes: %w", recSize, vmerr.ErrUnsupported)
	}
	pg, err := k.ReadU64(v)
	if err != nil {
		return 0, nil, err
	}
	var out []Finding
	total := 0
	seen := map[vmi.VA]bool{}
	for p := vmi.VA(pg); p != 0; {
		if err := ctx.Err(); err != nil {
			return total, out, err
		}
		if !kernelPtr(p) || seen[p] || len(seen) >= maxFtracePages {
			return total, out, fmt.Errorf("ftrace page %#x after %d (not a kernel pointer, a cycle or too many): %w", uint64(p), len(seen), vmi.ErrCorrupt)
		}
		seen[p] = true
		r := newReader(k)
		next := vmi.VA(r.uint("ftrace_page", p, "next"))
		recs := vmi.VA(r.uint("ftrace_page", p, "records"))
		n := int(int32(r.uint("ftrace_page", p, "index")))
		if r.err != nil {
			return total, out, r.err
		}
		if n < 0 || total+n > maxFtraceRecords {
			return total, out, fmt.Errorf("ftrace page %#x: %d records: %w", uint64(p), n, vmi.ErrCorrupt)
		}
		b := make([]byte, uint64(n)*recSize)
		if _, err := k.AS.ReadVirt(b, recs); err != nil {
			return total, out, fmt.Errorf("ftrace page %#x records at %#x: %w", uint64(p), uint64(recs), err)
		}
		for i := 0; i < n; i++ {
			e := b[uint64(i)*recSize:]
			var fb [8]byte
			copy(fb[:], e[flOff:flOff+flSize])
			flags := binary.LittleEndian.Uint64(fb[:])
			ip := vmi.VA(binary.LittleEndian.Uint64(e[ipOff:]))
			if flags&fl["FTRACE_FL_ENABLED"] != 0 && flags&fl["FTRACE_FL_IPMODIFY"] != 0 {
				out = append(out, c.m.newFinding(KindFtraceHook, ip, "ftrace record",
					fmt.Sprintf("ftrace call site enabled with IPMODIFY (flags %#x): an ftrace handler may redirect calls of this function", flags)))
			}
		}
		total += n
		p = next
	}
	return total, out, nil
}

// Caps on the kprobe table walk: buckets, probes on the hash chains, and
// probes on all aggregate probes' lists together.
const (
	maxKprobeBuckets = 4096
	maxKprobes       = 1 << 16
)

// kprobes walks kprobe_table (hlist buckets of struct kprobe, aggregate
// probes' children on their list) and reports each probe whose pre or
// post handler is outside core kernel text.
func (c *checker) kprobes(ctx context.Context) (int, []Finding, error) {
	k := c.k
	base, span, ok := c.m.symbolSpan("kprobe_table", maxKprobeBuckets*8)
	if !ok {
		return 0, nil, fmt.Errorf("no kprobe_table: %w", vmerr.ErrNotPresent)
	}
	hOff, err1 := k.Field("kprobe", "hlist")
	lOff, err2 := k.Field("kprobe", "list")
	preOff, err3 := k.Field("kprobe", "pre_handler")
	if err := firstErr(err1, err2, err3); err != nil {
		return 0, nil, err
	}
	aggr, _ := k.Symbols.Addr("aggr_pre_handler")
	var out []Finding
	seen := map[vmi.VA]bool{}
	check := func(p vmi.VA) {
		r := newReader(k)
		addr := vmi.VA(r.uint("kprobe", p, "addr"))
		pre := vmi.VA(r.uint("kprobe", p, "pre_handler"))
		post := vmi.VA(r.uint("kprobe", p, "post_handler"))
		if r.err != nil {
			c.problem("kprobe", p, r.err)
			return
		}
		c.kprobeAddrs = append(c.kprobeAddrs, addr)
		sym, off, _ := c.m.Symbolize(addr)
		for _, h := range []vmi.VA{pre, post} {
			if h != 0 && !c.m.InCore(h) {
				out = append(out, c.m.newFinding(KindKprobe, h, fmt.Sprintf("kprobe %#x on %s+%#x", uint64(p), sym, off),
					fmt.Sprintf("kprobe at %#x has a handler outside core kernel text", uint64(addr))))
			}
		}
	}
	children := 0 // probes on aggregate probes' lists, all buckets together
	for b := uint64(0); b < span/8; b++ {
		if err := ctx.Err(); err != nil {
			return len(seen), out, err
		}
		first, err := k.ReadU64(base + vmi.VA(b*8))
		if err != nil {
			c.problem("kprobe_table bucket", base+vmi.VA(b*8), err)
			continue
		}
		for n := vmi.VA(first); n != 0; {
			if !kernelPtr(n) || seen[n] || len(seen) >= maxKprobes {
				c.problem("kprobe_table", n, fmt.Errorf("entry not a kernel pointer, a cycle or too many: %w", vmi.ErrCorrupt))
				break
			}
			seen[n] = true
			p := n - vmi.VA(hOff)
			if pre, err := k.ReadU64(p + vmi.VA(preOff)); err == nil && aggr != 0 && vmi.VA(pre) == aggr {
				if pr := walkList(k, p+vmi.VA(lOff), maxKprobes-children, func(e vmi.VA) bool {
					children++
					check(e - vmi.VA(lOff))
					return true
				}); pr != nil {
					c.rep.Problems = append(c.rep.Problems, *pr)
				}
			} else {
				check(p)
			}
			next, err := k.ReadU64(n)
			if err != nil {
				c.problem("kprobe_table", n, err)
				break
			}
			n = vmi.VA(next)
		}
	}
	return len(seen), out, nil
}
