package qemu

import (
	"context"
	"errors"
	"fmt"
)

// ConsistentDump writes a memory dump of the guest behind the QMP socket
// qmpPath to out (an absolute path QEMU can write) in format ("elf",
// "kdump-zlib", ...): QMP stop, dump-guest-memory, and cont if the guest
// was running before, also when ctx is cancelled or the dump fails.
func ConsistentDump(ctx context.Context, qmpPath, out, format string) (err error) {
	q, err := DialQMP(ctx, qmpPath)
	if err != nil {
		return err
	}
	defer q.Close()
	st, err := q.Status(ctx)
	if err != nil {
		return err
	}
	if st.Running {
		if err := q.Stop(ctx); err != nil {
			return err
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
			defer cancel()
			if cerr := q.Cont(rctx); cerr != nil {
				err = errors.Join(err, fmt.Errorf("qemu: resuming after the dump: %w", cerr))
			}
		}()
	}
	if err := q.DumpGuestMemory(ctx, out, format); err != nil {
		return fmt.Errorf("qemu: dump to %s: %w", out, err)
	}
	return nil
}
