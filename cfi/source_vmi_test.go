package cfi

import (
	"context"
	"errors"
	"math/rand"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// ept is the test's own copy of the armed pages, changed only by the
// arm and disarm lists the pager returns.
type ept map[vmi.VA]bool

func (e ept) apply(t *testing.T, arm, disarm []vmi.VA) {
	t.Helper()
	for _, va := range disarm {
		if !e[va] {
			t.Fatalf("disarm of %#x, not armed", uint64(va))
		}
		delete(e, va)
	}
	for _, va := range arm {
		if e[va] {
			t.Fatalf("arm of %#x, already armed", uint64(va))
		}
		e[va] = true
	}
}

type xstep struct {
	cpu  int
	page vmi.VA
}

type trans struct {
	cpu      int
	from, to vmi.VA
}

// simulate runs the guest's executions against the pager: an execution
// on an armed page is a stop; the pager's lists change the EPT.
func simulate(t *testing.T, code []vmi.VA, start map[int]vmi.VA, run []xstep) []trans {
	t.Helper()
	p := newVMIPager(code)
	for cpu, va := range start {
		p.start(cpu, va)
	}
	e := ept{}
	for _, va := range code {
		e[va] = true
	}
	for _, va := range start {
		delete(e, va)
	}
	var out []trans
	for _, x := range run {
		if !e[x.page] {
			continue
		}
		ev, arm, disarm, moved := p.stop(x.cpu, x.page)
		if !moved {
			t.Fatalf("stop at %#x on %d, an armed page: not a move", uint64(x.page), x.cpu)
		}
		if ev.Page != x.page || ev.CPU != x.cpu {
			t.Fatalf("stop at %#x on %d: event %+v", uint64(x.page), x.cpu, ev)
		}
		e.apply(t, arm, disarm)
		out = append(out, trans{x.cpu, ev.From, ev.Page})
	}
	var want []vmi.VA
	for va := range e {
		want = append(want, va)
	}
	sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
	if got := p.armedList(); !slices.Equal(got, want) {
		t.Fatalf("pager armed %d pages, the EPT its lists built %d", len(got), len(want))
	}
	return out
}

// reference is the transitions of one vCPU computed from its executions
// alone: its code pages in order, runs of one page merged, consecutive
// pairs (starting from start).
func reference(cpu int, start vmi.VA, code map[vmi.VA]bool, run []xstep) []trans {
	var out []trans
	cur := start
	for _, x := range run {
		if x.cpu != cpu || !code[x.page] || x.page == cur {
			continue
		}
		out = append(out, trans{cpu, cur, x.page})
		cur = x.page
	}
	return out
}

func TestVMIPagerTable(t *testing.T) {
	const a, b, c, u = 0xffffffff81000000, 0xffffffff81001000, 0xffffffff81002000, 0x400000
	code := []vmi.VA{a, b, c}
	for _, tc := range []struct {
		name  string
		start map[int]vmi.VA
		run   []xstep
		want  []trans
	}{
		{"one vCPU", map[int]vmi.VA{0: a}, []xstep{{0, a}, {0, b}, {0, b}, {0, a}, {0, c}},
			[]trans{{0, a, b}, {0, b, a}, {0, a, c}}},
		{"user page between", map[int]vmi.VA{0: a}, []xstep{{0, u}, {0, a}, {0, u}, {0, b}},
			[]trans{{0, a, b}}},
		{"unknown start", nil, []xstep{{0, b}, {0, c}},
			[]trans{{0, 0, b}, {0, b, c}}},
		// vCPU 1 enters b while vCPU 0 is on it: not seen (the permission is
		// the guest's); vCPU 1's next change is reported from its last page.
		{"shared page", map[int]vmi.VA{0: a, 1: c}, []xstep{{0, b}, {1, b}, {1, a}, {0, c}, {1, b}},
			[]trans{{0, a, b}, {1, c, a}, {0, b, c}, {1, a, b}}},
		// vCPU 0 leaves a while vCPU 1 is on it: a stays disarmed until
		// vCPU 1 leaves it too.
		{"leave an occupied page", map[int]vmi.VA{0: a, 1: a}, []xstep{{0, b}, {0, a}, {1, c}, {0, c}, {1, a}},
			[]trans{{0, a, b}, {1, a, c}, {1, c, a}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := simulate(t, code, tc.start, tc.run)
			if !slices.Equal(got, tc.want) {
				t.Errorf("transitions %v, want %v", got, tc.want)
			}
		})
	}
}

// TestVMIPagerRandom runs long pseudo-random executions (two vCPUs on
// disjoint code, user pages between) and compares the transitions with
// the per-vCPU reference.
func TestVMIPagerRandom(t *testing.T) {
	r := rand.New(rand.NewSource(15))
	var code []vmi.VA
	codeSet := map[vmi.VA]bool{}
	for i := range 64 {
		va := vmi.VA(0xffffffff81000000) + vmi.VA(i*PageSize)
		code = append(code, va)
		codeSet[va] = true
	}
	start := map[int]vmi.VA{0: code[0], 1: code[32]}
	var run []xstep
	for range 20000 {
		cpu := r.Intn(2)
		var pg vmi.VA
		switch n := r.Intn(10); {
		case n == 0:
			pg = vmi.VA(0x400000 + r.Intn(8)*PageSize) // user
		case n < 4:
			pg = start[cpu] // stay near the start page: runs of one page
		default:
			pg = code[cpu*32+r.Intn(32)]
		}
		run = append(run, xstep{cpu, pg})
	}
	got := simulate(t, code, start, run)
	for cpu := range 2 {
		var mine []trans
		for _, x := range got {
			if x.cpu == cpu {
				mine = append(mine, x)
			}
		}
		want := reference(cpu, start[cpu], codeSet, run)
		if len(want) < 1000 {
			t.Fatalf("vCPU %d: only %d reference transitions", cpu, len(want))
		}
		if !slices.Equal(mine, want) {
			t.Errorf("vCPU %d: %d transitions, reference %d", cpu, len(mine), len(want))
		}
	}
}

// TestVMIPagerRepeatStop: stops queued on a page before it was disarmed
// are no transition and change nothing.
func TestVMIPagerRepeatStop(t *testing.T) {
	const a, b = 0xffffffff81000000, 0xffffffff81001000
	p := newVMIPager([]vmi.VA{a, b})
	p.start(0, a)
	if ev, arm, disarm, moved := p.stop(0, b); !moved || ev.From != a || !slices.Equal(arm, []vmi.VA{a}) || !slices.Equal(disarm, []vmi.VA{b}) {
		t.Fatalf("a→b: %+v arm %x disarm %x moved %v", ev, arm, disarm, moved)
	}
	for range 3 {
		if ev, arm, disarm, moved := p.stop(0, b); moved || len(arm)+len(disarm) != 0 {
			t.Fatalf("repeat on b: %+v arm %x disarm %x moved %v", ev, arm, disarm, moved)
		}
	}
	if got := p.armedList(); !slices.Equal(got, []vmi.VA{a}) {
		t.Errorf("armed %x, want only a", got)
	}
}

func TestVMILimiter(t *testing.T) {
	l := newLimiter(3)
	t0 := time.Unix(1000, 0)
	var n int
	for i := range 10 {
		if l.allow(t0.Add(time.Duration(i) * time.Millisecond)) {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d allowed in one second, want 3", n)
	}
	if !l.allow(t0.Add(time.Second)) {
		t.Error("not allowed a second later")
	}
}

// TestVMISourceCaps: more code pages than MaxPages is an error before
// the tracer is touched (a nil Tracer would panic).
func TestVMISourceCaps(t *testing.T) {
	r := &Regions{Text: 0xffffffff81000000, Etext: 0xffffffff81000000 + 10*PageSize}
	err := (&VMISource{Regions: r, MaxPages: 9}).Run(context.Background(), func(Event) error { return nil })
	if err == nil || errors.Is(err, ErrNeedsPageTraps) {
		t.Fatalf("err %v, want the page cap", err)
	}
	if n := len(r.codePages()); n != 10 {
		t.Errorf("%d code pages, want 10", n)
	}
}
