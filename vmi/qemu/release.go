package qemu

import (
	"context"
	"errors"
	"fmt"
)

// Released is what Release found and did.
type Released struct {
	Journal string // the journal read
	// Left is false when there was no journal: no vmscope left anything
	// on this guest (Release then changes nothing).
	Left  bool
	PID   int    // the process that left it
	Found string // the run state it found: "running", "paused", "unknown"
	// Removed counts the journaled traps the stub still held and gave
	// up; Absent those it no longer held (QEMU had dropped them, or the
	// killed process removed them itself).
	Removed, Absent int
	// Resumed: the guest was let run (it ran before vmscope attached, or
	// its run state was unknown, or someone resumed it since). Otherwise
	// it was left paused, as it was found.
	Resumed bool
}

// Release restores a guest that a vmscope process left without restoring
// it (killed with SIGKILL, or a Close that failed), as its journal says:
// it attaches the stub, removes every trap the journal names, turns
// physical-memory mode off, and detaches (which resumes the guest and
// drops any trap left) only when the guest ran before vmscope attached
// (or its state was unknown: without QMP vmscope always detaches), or
// when QMP says it runs now; a guest found paused is left paused. A QMP
// stop of an unfinished guest dump is undone with a cont when the guest
// ran before. The journal is removed once all of that went through.
//
// Without a journal Release changes nothing (Left is false). It refuses a
// guest another vmscope is attached to (ErrInUse).
func Release(ctx context.Context, spec string, opts ...Option) (*Released, error) {
	sp, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	path := o.journal
	if path == "" {
		if path, err = JournalPath(sp); err != nil {
			return nil, err
		}
	}
	lf, doc, err := lockJournal(path)
	if err != nil {
		return nil, err
	}
	j := &journal{path: path, lock: lf}
	rel := &Released{Journal: path}
	if doc == nil {
		j.finish()
		return rel, nil
	}
	rel.Left, rel.PID, rel.Found = true, doc.PID, doc.Found
	ctx, cancel := context.WithTimeout(ctx, closeTimeout)
	defer cancel()

	var errs []error
	var q *QMP
	runningNow := false
	if sp.QMP != "" {
		if q, err = DialQMP(ctx, sp.QMP); err != nil {
			errs = append(errs, err)
		} else {
			defer q.Close()
			st, err := q.Status(ctx)
			if err != nil {
				errs = append(errs, err)
			}
			runningNow = st.Running
		}
	} else if doc.QMPStopped {
		j.keep()
		return rel, fmt.Errorf("qemu: release: the journal %s names a QMP stop: give the guest's QMP socket (gdb://HOST:PORT,qmp=unix:PATH)", path)
	}
	resume := doc.Found != foundPaused || runningNow
	if doc.Attached {
		d, err := DialGDB(ctx, sp.GDB)
		if err != nil {
			j.keep()
			return rel, errors.Join(append(errs, err)...)
		}
		for _, t := range doc.Traps {
			bp, err := t.breakpoint()
			if err != nil {
				errs = append(errs, err)
				continue
			}
			var se *StubError
			switch err := d.Remove(ctx, bp.Kind, uint64(bp.Addr), bp.Size); {
			case err == nil:
				rel.Removed++
			case errors.As(err, &se):
				rel.Absent++ // E22: the stub does not hold it
			default:
				errs = append(errs, fmt.Errorf("qemu: release: clear %s at %v: %w", bp.Kind, bp.Addr, err))
			}
		}
		if err := d.SetPhysicalMode(ctx, false); err != nil {
			errs = append(errs, err)
		}
		if resume {
			if err := d.Detach(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, d.Close())
		if !resume && q != nil {
			// as Close leaves a guest found paused
			if err := q.Stop(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if doc.QMPStopped && doc.Found == foundRunning && q != nil {
		if err := q.Cont(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	rel.Resumed = resume
	if err := errors.Join(errs...); err != nil {
		j.keep()
		return rel, err
	}
	if err := j.finish(); err != nil {
		return rel, err
	}
	return rel, nil
}
