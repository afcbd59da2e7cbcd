package cfi

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// VMISource takes page-level kernel execution from execute permission in
// the second-level page tables (EPT/NPT) through a vmi.Tracer whose traps
// run on (vmi.RunsOn) and accept page-sized execute traps
// (vmi.PageExec): LibVMI (vmi/libvmi, build tag libvmi) on Xen or on KVM
// with KVMi. It arms an execute trap on every code page of the Regions
// (core text and module text) except the pages the vCPUs are on; an
// execute stop on page B of a vCPU that was on page A is the transition
// A→B (an Event with From, as the plugin source emits), after which A is
// armed again (unless another vCPU is on it) and B disarmed, so the trap
// follows execution page by page. The permissions are the guest's, not a
// vCPU's: while a vCPU is on page B, another vCPU's entry into B is not
// seen (its next page change is reported From its last seen page).
//
// What it was checked against: the binding compiles against LibVMI 0.15's
// headers with the master branch's events.h (go vet -tags libvmi), and
// the re-arm logic (vmiPager) is unit-tested on page sequences whose
// transitions are computed independently; it has not run on a hypervisor
// (no Xen or KVMi host here). The QEMU stub refuses its page-sized
// execute traps with ErrNeedsPageTraps, and a live test checks that it
// leaves no trap and the guest running.
type VMISource struct {
	Tracer  vmi.Tracer
	Regions *Regions
	// MaxPages bounds the pages armed (default 16384: 64 MiB of text);
	// more code pages than that is an error before any trap is set.
	MaxPages int
	// Rate bounds the events reported per second (default 10000); the
	// transitions above it are counted in Dropped and not emitted.
	Rate float64

	dropped atomic.Int64
}

// ErrNeedsPageTraps is a tracer that cannot trap execution a page at a
// time: the vmi source needs LibVMI on Xen or KVMi.
var ErrNeedsPageTraps = errors.New("cfi: the vmi source needs page execute traps: LibVMI (build tag libvmi) on Xen or on KVM with KVMi")

// Name is "vmi".
func (s *VMISource) Name() string { return "vmi" }

// Dropped is the number of transitions over Rate not emitted.
func (s *VMISource) Dropped() int64 { return s.dropped.Load() }

// listener is a tracer whose events arrive only while Listen runs
// (vmi/libvmi's Instance).
type listener interface {
	Listen(ctx context.Context) error
}

// codePages lists the page addresses of core and module text.
func (r *Regions) codePages() []vmi.VA {
	var out []vmi.VA
	for va := pageOf(r.Text); va < r.Etext; va += PageSize {
		out = append(out, va)
	}
	for _, m := range r.Modules {
		for va := pageOf(m.Base); va < m.Base+vmi.VA(m.Size); va += PageSize {
			out = append(out, va)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Run arms the pages and reports transitions until ctx ends or emit
// fails. Every trap it set is removed on every path, with a context of
// its own so that a cancelled ctx still cleans up.
func (s *VMISource) Run(ctx context.Context, emit func(Event) error) (err error) {
	maxPages := s.MaxPages
	if maxPages <= 0 {
		maxPages = 16384
	}
	rate := s.Rate
	if rate <= 0 {
		rate = 10000
	}
	pages := s.Regions.codePages()
	if len(pages) == 0 {
		return errors.New("cfi: vmi source: no code pages in the regions")
	}
	if len(pages) > maxPages {
		return fmt.Errorf("cfi: vmi source: %d code pages, more than the cap of %d", len(pages), maxPages)
	}
	if r, ok := s.Tracer.(vmi.RunsOn); !ok || !r.TrapsRunOn() {
		// Try the first page anyway: the refusal is the backend's to make.
		if e := s.Tracer.Insert(ctx, vmi.PageExec(pages[0])); e == nil {
			e = s.Tracer.Remove(context.WithoutCancel(ctx), vmi.PageExec(pages[0]))
			return errors.Join(fmt.Errorf("%w (tracer %T holds the vCPU on a trap)", ErrNeedsPageTraps, s.Tracer), e)
		} else {
			return fmt.Errorf("%w: %w", ErrNeedsPageTraps, e)
		}
	}
	cpus, err := s.Tracer.CPUs(ctx)
	if err != nil {
		return err
	}
	p := newVMIPager(pages)
	for _, c := range cpus {
		if c.CS.Selector&3 == 0 && vmi.VA(c.RIP) >= KernelMin {
			p.start(c.ID, pageOf(vmi.VA(c.RIP)))
		}
	}
	armed := map[vmi.VA]bool{}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		var errs []error
		for va := range armed {
			if e := s.Tracer.Remove(cctx, vmi.PageExec(va)); e != nil {
				errs = append(errs, e)
			}
		}
		err = errors.Join(append([]error{err}, errs...)...)
	}()
	apply := func(arm, disarm []vmi.VA) error {
		for _, va := range disarm {
			if armed[va] {
				if err := s.Tracer.Remove(ctx, vmi.PageExec(va)); err != nil {
					return err
				}
				delete(armed, va)
			}
		}
		for _, va := range arm {
			if !armed[va] {
				if err := s.Tracer.Insert(ctx, vmi.PageExec(va)); err != nil {
					if errors.Is(err, vmi.ErrBadTrap) {
						return fmt.Errorf("%w: %w", ErrNeedsPageTraps, err)
					}
					return err
				}
				armed[va] = true
			}
		}
		return nil
	}
	if err := apply(p.armedList(), nil); err != nil {
		return quiet(ctx, err)
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	if l, ok := s.Tracer.(listener); ok {
		go func() { _ = l.Listen(lctx) }()
	}
	lim := newLimiter(rate)
	for {
		var st vmi.Stop
		select {
		case <-ctx.Done():
			return nil
		case st = <-s.Tracer.Events():
		}
		if st.Reason == vmi.StopExited {
			return vmi.ErrExited
		}
		if st.Reason != vmi.StopTrap || !st.Access.Execute {
			continue
		}
		addr := st.Addr
		if addr == 0 {
			regs, err := s.Tracer.Regs(ctx, max(st.CPU, 0))
			if err != nil {
				return quiet(ctx, err)
			}
			addr = vmi.VA(regs.RIP)
		}
		ev, arm, disarm, moved := p.stop(st.CPU, pageOf(addr))
		if !moved {
			continue
		}
		if err := apply(arm, disarm); err != nil {
			return quiet(ctx, err)
		}
		ev.Addr, ev.Time = addr, time.Now()
		if !lim.allow(ev.Time) {
			s.dropped.Add(1)
			continue
		}
		if err := emit(ev); err != nil {
			return err
		}
	}
}

// quiet is nil for an error caused by ctx ending.
func quiet(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// limiter allows at most rate events in each second.
type limiter struct {
	rate  float64
	start time.Time
	n     float64
}

func newLimiter(rate float64) *limiter { return &limiter{rate: rate} }

func (l *limiter) allow(now time.Time) bool {
	if now.Sub(l.start) >= time.Second {
		l.start, l.n = now, 0
	}
	if l.n >= l.rate {
		return false
	}
	l.n++
	return true
}

// vmiPager is the re-arm state machine of the vmi source: the code pages,
// the page each vCPU is on, and so the pages armed (every code page no
// vCPU is on). It does no I/O.
type vmiPager struct {
	code map[vmi.VA]bool
	on   map[int]vmi.VA // vCPU → page
	occ  map[vmi.VA]int // page → vCPUs on it
}

func newVMIPager(pages []vmi.VA) *vmiPager {
	p := &vmiPager{code: map[vmi.VA]bool{}, on: map[int]vmi.VA{}, occ: map[vmi.VA]int{}}
	for _, va := range pages {
		p.code[va] = true
	}
	return p
}

// start places vCPU cpu on page va before arming (not a transition).
func (p *vmiPager) start(cpu int, va vmi.VA) { p.move(cpu, va) }

func (p *vmiPager) move(cpu int, va vmi.VA) (from vmi.VA) {
	from, had := p.on[cpu]
	if had {
		if p.occ[from]--; p.occ[from] == 0 {
			delete(p.occ, from)
		}
	}
	if p.code[va] {
		p.on[cpu] = va
		p.occ[va]++
	} else {
		delete(p.on, cpu)
	}
	return from
}

// armed reports whether page va is armed.
func (p *vmiPager) armed(va vmi.VA) bool { return p.code[va] && p.occ[va] == 0 }

// armedList lists the armed pages, sorted.
func (p *vmiPager) armedList() []vmi.VA {
	var out []vmi.VA
	for va := range p.code {
		if p.occ[va] == 0 {
			out = append(out, va)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// stop takes an execute stop of vCPU cpu on page b: the transition from
// the page the vCPU was on (0 when unknown), the pages to arm (the page
// left, when no vCPU remains on it) and to disarm (b). moved is false for
// a stop on the page the vCPU is already on (stops queued before b was
// disarmed): no transition, nothing to change.
func (p *vmiPager) stop(cpu int, b vmi.VA) (ev Event, arm, disarm []vmi.VA, moved bool) {
	if cur, ok := p.on[cpu]; ok && cur == b {
		return Event{}, nil, nil, false
	}
	from := p.move(cpu, b)
	ev = Event{CPU: cpu, Page: b, From: from, Addr: b}
	if from != 0 && p.armed(from) {
		arm = append(arm, from)
	}
	if p.code[b] {
		disarm = append(disarm, b)
	}
	return ev, arm, disarm, true
}
