package inject

import (
	"context"
	"fmt"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// Recovered is what Recover found and did.
type Recovered struct {
	Journal string `json:"journal"`
	// Left is false when there was no journal (nothing to undo).
	Left bool `json:"left"`
	// Stale: the journal's dummy is gone (it exited or exec'd, or the
	// guest rebooted): nothing of it is left to restore.
	Stale bool   `json:"stale"`
	Dummy int    `json:"dummy_pid,omitempty"`
	Call  string `json:"call_in_flight,omitempty"`
	// Unmapped, MaskRestored, Restored: what was put back.
	Unmapped     bool `json:"unmapped"`
	MaskRestored bool `json:"mask_restored"`
	Restored     bool `json:"restored"`
}

// Recover replays the undo journal a killed vmscope left: it checks the
// dummy is still the task the journal names, lets a call in flight run
// to its return, unmaps the buffer, puts the signal mask, the stack bytes
// and the registers back, verifies them and removes the journal. t must
// be paused. The GDB stub's breakpoints of the killed process are the
// guest's own journal's business (qemu.Release).
func Recover(ctx context.Context, t vmi.Tracer, c vmi.Controller, k *linux.Kernel, path string) (*Recovered, error) {
	rec := &Recovered{Journal: path}
	lf, doc, err := lockJournal(path)
	if err != nil {
		return rec, err
	}
	j := &journal{path: path, lock: lf}
	if doc == nil {
		j.finish()
		return rec, nil
	}
	j.doc = *doc
	rec.Left, rec.Dummy, rec.Call = true, doc.Dummy, doc.Call
	kr, err := newKernel(k)
	if err != nil {
		j.keep()
		return rec, err
	}
	if !doc.RegsChanged {
		return rec, j.finish() // killed before the first change
	}
	now, err := kr.readTask(vmi.VA(doc.Task))
	if err != nil || !doc.same(now) {
		rec.Stale = true
		return rec, j.finish()
	}
	s := &Session{t: t, c: c, kr: kr, j: j, o: &Options{}, cpu: doc.CPU,
		saved: doc.Regs, gadget: vmi.VA(doc.Gadget), scratch: vmi.VA(doc.ScratchVA), scratchPA: vmi.PA(doc.ScratchPA),
		buf: vmi.VA(doc.MapAddr), bufLen: doc.MapLen}
	s.dummy = Candidate{PID: now.PID, Comm: now.Comm, task: now}
	if doc.ScratchVA != 0 {
		p, err := translate(kr.K.Mem, now.PGD, kr.K.AS.LA57, vmi.VA(doc.ScratchVA))
		if err != nil || uint64(p.PA) != doc.ScratchPA {
			j.keep()
			return rec, fmt.Errorf("%w: the scratch page of the journal no longer maps to %#x", ErrJournal, doc.ScratchPA)
		}
	}
	mapped, masked := doc.MapAddr != 0 || doc.MapPending, doc.MaskBlocked
	if err := s.end(ctx); err != nil {
		j.keep()
		return rec, fmt.Errorf("inject: recover: %w (the journal %s stays)", err, path)
	}
	rec.Unmapped, rec.MaskRestored, rec.Restored = mapped, masked, true
	return rec, j.finish()
}
