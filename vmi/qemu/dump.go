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
	ep, err := DialSpec(ctx, spec)
	if err != nil {
		return err
	}
	defer ep.Close()
	return ConsistentDumpEndpoint(ctx, ep, out, format, opts...)
}

// ConsistentDumpEndpoint is ConsistentDump through an endpoint's monitor
// (the caller closes ep).
func ConsistentDumpEndpoint(ctx context.Context, ep Endpoint, out, format string, opts ...Option) (err error) {
	q := ep.Monitor
	if q == nil {
		return errors.New("qemu: a dump needs the guest's monitor (QMP)")
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	var j *journal
	if !o.noJournal {
		path := o.journal
		if path == "" {
			if path, err = journalPathOf(ep); err != nil {
				return err
			}
		}
		if j, err = openJournal(path, ep.Name); err != nil {
			return err
		}
	}
	st, err := monStatus(ctx, q)
	if err != nil {
		j.discard()
		return err
	}
	if !st.Running {
		j.discard()
	} else {
		if err := j.beginStop(foundRunning); err != nil {
			j.discard()
			return err
		}
		if err := monExec(ctx, q, "stop"); err != nil {
			j.keep()
			return err
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
			defer cancel()
			if cerr := monExec(rctx, q, "cont"); cerr != nil {
				err = errors.Join(err, fmt.Errorf("qemu: resuming after the dump: %w", cerr))
				j.keep()
				return
			}
			if ferr := j.finish(); ferr != nil {
				err = errors.Join(err, ferr)
			}
		}()
	}
	_, err = q.Execute(ctx, "dump-guest-memory", map[string]any{
		"paging": false, "protocol": "file:" + out, "format": format,
	})
	if err != nil {
		return fmt.Errorf("qemu: dump to %s: %w", out, err)
	}
	return nil
}
