package cfi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// SampleSource interrupts the guest at a set rate through its debug stub
// (any accelerator), reads every vCPU's RIP, CS and RSP, and for a vCPU
// in kernel mode (CS RPL 0) on a kernel address unwinds the kernel stack:
// the words above RSP that point into known text right after a call
// instruction (linux.CallBefore) are return addresses. Each sample is
// an Event for RIP's page with the callers' pages; then the guest runs
// again. A page that takes a share p of kernel execution is seen with
// probability 1-(1-p)^n after n kernel samples (SampleStats.SeenProbability).
type SampleSource struct {
	Guest   vmi.Live
	AS      vmi.AddressSpace // the kernel's address space, for stack and text reads
	Regions *Regions
	// Rate is samples per second (default 100).
	Rate float64
	// MaxFrames bounds the return addresses kept per sample (default 16);
	// MaxStack the stack bytes scanned above RSP (default 2048, never past
	// the 16 KiB-aligned end of the stack RSP is in).
	MaxFrames, MaxStack int

	samples, kernel, frames atomic.Int64
	text                    map[vmi.VA][]byte
}

// SampleStats are the counts of a sampling run.
type SampleStats struct {
	Samples int64 // interrupts taken
	Kernel  int64 // vCPU samples in kernel mode on a kernel address
	Frames  int64 // return addresses unwound
}

// SeenProbability is the probability that a page taking the share p of
// kernel-mode execution appears in Kernel independent samples.
func (s SampleStats) SeenProbability(p float64) float64 {
	if p <= 0 {
		return 0
	}
	if p >= 1 {
		return 1
	}
	return -math.Expm1(float64(s.Kernel) * math.Log1p(-p))
}

// Stats returns the counts so far.
func (s *SampleSource) Stats() SampleStats {
	return SampleStats{Samples: s.samples.Load(), Kernel: s.kernel.Load(), Frames: s.frames.Load()}
}

// Name is "sample".
func (s *SampleSource) Name() string { return "sample" }

const maxTextCache = 4096 // text pages kept for the call checks (16 MiB)

// Run samples until ctx ends. It pauses the guest only for the time of a
// sample and leaves it running when it returns.
func (s *SampleSource) Run(ctx context.Context, emit func(Event) error) error {
	rate := s.Rate
	if rate <= 0 {
		rate = 100
	}
	if rate > 10000 {
		return fmt.Errorf("cfi: sample rate %g/s: at most 10000", rate)
	}
	if s.MaxFrames <= 0 {
		s.MaxFrames = 16
	}
	if s.MaxStack <= 0 {
		s.MaxStack = 2048
	}
	s.text = map[vmi.VA][]byte{}
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		evs, err := s.sample(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, ev := range evs {
			if err := emit(ev); err != nil {
				return err
			}
		}
	}
}

// sample pauses the guest, reads every vCPU and unwinds the kernel ones,
// and resumes it. A sample is not cut by ctx (a pause cut short would
// leave the guest stopping after Run returned); each step of it is bounded
// by the backend's own timeouts.
func (s *SampleSource) sample(ctx context.Context) (evs []Event, err error) {
	ctx = context.WithoutCancel(ctx)
	if err := s.Guest.Pause(ctx); err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.Guest.Resume(ctx)) }()
	now := time.Now()
	s.samples.Add(1)
	cpus, err := s.Guest.CPUs(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range cpus {
		rip := vmi.VA(c.RIP)
		if c.CS.Selector&3 != 0 || rip < KernelMin {
			continue
		}
		s.kernel.Add(1)
		ev := Event{CPU: c.ID, Page: pageOf(rip), Addr: rip, Time: now}
		for _, ret := range s.unwind(vmi.VA(c.RSP)) {
			ev.Callers = append(ev.Callers, pageOf(ret))
		}
		s.frames.Add(int64(len(ev.Callers)))
		evs = append(evs, ev)
	}
	return evs, nil
}

// unwind returns the return addresses on the stack above rsp, innermost
// first: words pointing into known text right after a call.
func (s *SampleSource) unwind(rsp vmi.VA) []vmi.VA {
	if rsp < KernelMin || rsp%8 != 0 {
		return nil
	}
	end := (rsp | (16<<10 - 1)) + 1 // the 16 KiB-aligned top of rsp's stack
	n := uint64(s.MaxStack)
	if end > rsp && uint64(end-rsp) < n {
		n = uint64(end - rsp)
	}
	buf := make([]byte, n)
	got, _ := s.AS.ReadVirt(buf, rsp)
	buf = buf[:got&^7]
	var out []vmi.VA
	for i := 0; i+8 <= len(buf) && len(out) < s.MaxFrames; i += 8 {
		w := vmi.VA(uint64(buf[i]) | uint64(buf[i+1])<<8 | uint64(buf[i+2])<<16 | uint64(buf[i+3])<<24 |
			uint64(buf[i+4])<<32 | uint64(buf[i+5])<<40 | uint64(buf[i+6])<<48 | uint64(buf[i+7])<<56)
		if s.Regions.Known(w) && s.afterCall(w) {
			out = append(out, w)
		}
	}
	return out
}

// afterCall reports whether the instruction ending at ret is a call.
func (s *SampleSource) afterCall(ret vmi.VA) bool {
	if !s.Regions.Known(ret - 1) {
		return false
	}
	var b [linux.MaxCallLen]byte
	for i := range b {
		va := ret - linux.MaxCallLen + vmi.VA(i)
		pg := s.textPage(pageOf(va))
		if pg == nil {
			return false
		}
		b[i] = pg[va-pageOf(va)]
	}
	_, _, ok := linux.CallBefore(b[:], ret)
	return ok
}

func (s *SampleSource) textPage(va vmi.VA) []byte {
	if pg, ok := s.text[va]; ok {
		return pg
	}
	pg := make([]byte, PageSize)
	if _, err := s.AS.ReadVirt(pg, va); err != nil {
		pg = nil
	}
	if len(s.text) < maxTextCache {
		s.text[va] = pg
	}
	return pg
}
