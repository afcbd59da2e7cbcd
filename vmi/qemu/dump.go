package qemu

import (
	"context"
	"errors"
	"fmt"
)

// ConsistentDump writes a memory dump of the guest of spec (its QMP socket;
// the GDB stub is not used) to out (an absolute path QEMU can write) in
// format ("elf", "kdump-zlib", ...): QMP stop, dump-guest-memory, and cont
// if the guest was running before, also when ctx is cancelled or the dump
// fails. The guest's journal (as Open keeps it; WithJournal and
// WithoutJournal apply) records the stop before it is sent, so that
// Release resumes a guest a killed dump left stopped.
func ConsistentDump(ctx context.Context, spec Spec, out, format string, opts ...Option) (err error) {
	if spec.QMP == "" {
		return errors.New("qemu: a dump needs the guest's QMP socket")
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	var j *journal
	if !o.noJournal {
		path := o.journal
		if path == "" {
			if path, err = JournalPath(spec); err != nil {
				return err
			}
		}
		if j, err = openJournal(path, spec); err != nil {
			return err
		}
	}
	q, err := DialQMP(ctx, spec.QMP)
	if err != nil {
		j.discard()
		return err
	}
	defer q.Close()
	st, err := q.Status(ctx)
	if err != nil {
		j.discard()
		return err
	}
	if !st.Running {
		j.discard()
	} else {
		if err := j.update(func(d *journalDoc) { d.Found, d.QMPStopped = foundRunning, true }); err != nil {
			j.discard()
			return err
		}
		if err := q.Stop(ctx); err != nil {
			j.keep()
			return err
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
			defer cancel()
			if cerr := q.Cont(rctx); cerr != nil {
				err = errors.Join(err, fmt.Errorf("qemu: resuming after the dump: %w", cerr))
				j.keep()
				return
			}
			if ferr := j.finish(); ferr != nil {
				err = errors.Join(err, ferr)
			}
		}()
	}
	if err := q.DumpGuestMemory(ctx, out, format); err != nil {
		return fmt.Errorf("qemu: dump to %s: %w", out, err)
	}
	return nil
}
