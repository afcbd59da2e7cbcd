package watch

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// OperationStats is what the operation-based baseline saw.
type OperationStats struct {
	Stops   int `json:"stops"`   // breakpoint hits (every file operation of every task)
	Matched int `json:"matched"` // hits on a watched file
}

// opFunctions are the VFS functions operation-based monitors break on
// (DRAKVUF's Linux filetracer hooks the same), and where each finds the
// file it works on (Linux 6.1 x86-64 calling convention).
var opFunctions = []string{"vfs_read", "vfs_write", "notify_change", "vfs_unlink", "vfs_rename", "do_filp_open"}

// RunOperation is the operation-based baseline that bench/watch.sh
// measures target-based watching against: a breakpoint on each of
// vfs_read, vfs_write, notify_change, vfs_unlink, vfs_rename and
// do_filp_open, each hit filtered on the file it works on (f_inode for
// reads and writes, the dentry's inode for notify_change, vfs_unlink and
// vfs_rename, the last name component for do_filp_open) against the
// targets. It runs until ctx ends, then removes its breakpoints and
// leaves the guest running. armed, when not nil, is called once the
// breakpoints are in.
func RunOperation(ctx context.Context, t vmi.Tracer, w *Kernel, targets []*Target, armed func()) (st OperationStats, err error) {
	k := w.K
	// the same per-stop page cache as Run: a fair baseline
	cw := *w
	as, cache := cachedSpace(w.K.AS)
	cw.mem = as
	w = &cw
	inodes := map[vmi.VA]bool{}
	names := map[string]bool{}
	for _, tg := range targets {
		inodes[tg.Inode] = true
		names[path.Base(tg.Path)] = true
	}
	fInode, err1 := k.Field("file", "f_inode")
	oldDentry, err2 := k.Field("renamedata", "old_dentry")
	fname, err3 := k.Field("filename", "name")
	if err := errors.Join(err1, err2, err3); err != nil {
		return st, err
	}
	fn := map[vmi.VA]string{}
	for _, name := range opFunctions {
		a, ok := k.Symbols.Addr(name)
		if !ok {
			return st, fmt.Errorf("watch: no %s symbol: %w", name, ErrLayout)
		}
		fn[a] = name
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		var errs []error
		for a := range fn {
			if e := t.Remove(cctx, vmi.Breakpoint(a)); e != nil {
				errs = append(errs, e)
			}
		}
		if len(errs) == 0 {
			errs = append(errs, t.Resume(cctx))
		}
		err = errors.Join(append([]error{err}, errs...)...)
	}()
	if err := t.Pause(ctx); err != nil {
		return st, err
	}
	for a := range fn {
		if err := t.Insert(ctx, vmi.Breakpoint(a)); err != nil {
			return st, err
		}
	}
	if armed != nil {
		armed()
	}
	if err := t.Resume(ctx); err != nil {
		return st, err
	}
	dinode := func(d vmi.VA) vmi.VA {
		i, _ := w.ptr(d, w.dInode)
		return i
	}
	for {
		var s vmi.Stop
		select {
		case <-ctx.Done():
			return st, nil
		case s = <-t.Events():
		}
		if s.Reason == vmi.StopExited {
			return st, vmi.ErrExited
		}
		if s.Reason != vmi.StopTrap {
			continue
		}
		cpu := max(s.CPU, 0)
		cache.reset()
		regs, err := t.Regs(ctx, cpu)
		if err != nil {
			return st, ctxOr(ctx, err)
		}
		rip := vmi.VA(regs.RIP)
		name, ok := fn[rip]
		if !ok {
			if err := t.Resume(ctx); err != nil {
				return st, ctxOr(ctx, err)
			}
			continue
		}
		st.Stops++
		var inode vmi.VA
		switch name {
		case "vfs_read", "vfs_write":
			inode, _ = w.ptr(vmi.VA(regs.RDI), fInode)
		case "notify_change":
			inode = dinode(vmi.VA(regs.RSI))
		case "vfs_unlink":
			inode = dinode(vmi.VA(regs.RDX))
		case "vfs_rename":
			d, _ := w.ptr(vmi.VA(regs.RDI), oldDentry)
			inode = dinode(d)
		case "do_filp_open":
			p, _ := w.ptr(vmi.VA(regs.RSI), fname)
			if b, err := w.read(p, 256); err == nil {
				s := string(b)
				if i := strings.IndexByte(s, 0); i >= 0 {
					s = s[:i]
				}
				if names[path.Base(s)] {
					st.Matched++
				}
			}
		}
		if inode != 0 && inodes[inode] {
			st.Matched++
		}
		bp := vmi.Breakpoint(rip)
		if err := t.Remove(ctx, bp); err != nil {
			return st, ctxOr(ctx, err)
		}
		_, serr := t.Step(ctx, cpu)
		if err := errors.Join(serr, t.Insert(ctx, bp)); err != nil {
			return st, ctxOr(ctx, err)
		}
		if err := t.Resume(ctx); err != nil {
			return st, ctxOr(ctx, err)
		}
	}
}

// ctxOr is nil when ctx ended (the error came from it), else err.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}
