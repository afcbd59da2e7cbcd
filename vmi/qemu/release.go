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
	ep := Endpoint{Name: sp.String(), GDB: sp.GDB}
	var errs []error
	if sp.QMP != "" {
		// a monitor that does not answer must not stop the stub's part
		if d, err := DialSpec(ctx, sp); err != nil {
			errs = append(errs, err)
		} else {
			ep = d
			defer ep.Close()
		}
	}
	if ep.PID == 0 && sp.PID != 0 {
		ep.PID = sp.PID
	}
	rel, err := ReleaseEndpoint(ctx, ep, opts...)
	return rel, errors.Join(append(errs, err)...)
}

// ReleaseEndpoint is Release of an endpoint (the caller closes it).
func ReleaseEndpoint(ctx context.Context, ep Endpoint, opts ...Option) (*Released, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	var err error
	path := o.journal
	if path == "" {
		if path, err = journalPathOf(ep); err != nil {
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
	q := ep.Monitor
	runningNow := false
	if q != nil {
		st, err := monStatus(ctx, q)
		if err != nil {
			errs = append(errs, err)
		}
		runningNow = st.Running
	} else if doc.QMPStopped {
		j.keep()
		return rel, fmt.Errorf("qemu: release: the journal %s names a QMP stop: give the guest's QMP socket (gdb://HOST:PORT,qmp=unix:PATH)", path)
	}
	resume := doc.Found != foundPaused || runningNow
	if doc.Attached {
		addr := ep.GDB
		var closeStub func(context.Context) error
		if addr == "" && ep.OpenGDB != nil {
			if addr, closeStub, err = ep.OpenGDB(ctx); err != nil {
				j.keep()
				return rel, errors.Join(append(errs, err)...)
			}
		}
		if addr == "" {
			j.keep()
			return rel, errors.Join(append(errs, fmt.Errorf("qemu: release: the journal %s names traps on a GDB stub: give its address (gdb=HOST:PORT)", path))...)
		}
		d, err := DialGDB(ctx, addr)
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
			if err := monExec(ctx, q, "stop"); err != nil {
				errs = append(errs, err)
			}
		}
		if closeStub != nil {
			errs = append(errs, closeStub(ctx))
		}
	}
	if doc.QMPStopped && doc.Found == foundRunning && q != nil {
		if err := monExec(ctx, q, "cont"); err != nil {
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
