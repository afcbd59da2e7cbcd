package qemu

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// watch takes the stub's stop replies and ends the current run.
func (g *Guest) watch(ctx context.Context) {
	defer g.watchWG.Done()
	for {
		s, err := g.gdb.NextStop(ctx)
		if err != nil {
			g.mu.Lock()
			if g.running {
				g.running = false
				close(g.runDone)
			}
			g.mu.Unlock()
			return
		}
		g.mu.Lock()
		quiet := g.quiet
		if g.running {
			g.running = false
			g.lastStop = s
			close(g.runDone)
		}
		g.quiet = false
		wasRunning := g.running
		g.mu.Unlock()
		g.gdb.logPkt("..", []byte(fmt.Sprintf("stop %+v quiet=%v (running now %v)", s, quiet, wasRunning)))
		if quiet {
			continue
		}
		ev := stopOf(s)
		select {
		case g.events <- ev:
		default:
			g.mu.Lock()
			g.dropped++
			g.mu.Unlock()
		}
	}
}

// Events is the stream of stops the guest made on its own (breakpoints,
// watchpoints, a pause by someone else). It is buffered; events that do
// not fit are dropped and counted (Dropped). It is never closed.
func (g *Guest) Events() <-chan vmi.Stop { return g.events }

// Dropped is how many events did not fit in the Events buffer.
func (g *Guest) Dropped() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dropped
}

// Running reports whether the guest runs: as far as the stub said when it
// is attached, else whether it was found running and not paused since.
func (g *Guest) Running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.attached {
		return !g.wasPaused && !g.qmpPaused
	}
	return g.running
}

func (g *Guest) checkOpen() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	return nil
}

// Pause stops every vCPU: through the stub when it is attached (and waits
// until it reports the stop), else with QMP stop (journaled first, so
// that Release lets a guest found running run again). A guest found
// paused stays as it is.
func (g *Guest) Pause(ctx context.Context) error {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return err
	}
	if g.gdb == nil {
		if g.mon == nil {
			return ErrNoStub
		}
		if g.wasPaused || g.qmpPaused {
			return nil
		}
		if err := g.journal.beginStop(g.found); err != nil {
			return err
		}
		if err := monExec(ctx, g.mon, "stop"); err != nil {
			return fmt.Errorf("qemu: pause: %w", err)
		}
		g.mu.Lock()
		g.qmpPaused = true
		g.mu.Unlock()
		return nil
	}
	return g.pause(ctx)
}

func (g *Guest) pause(ctx context.Context) error {
	g.mu.Lock()
	if !g.running {
		g.mu.Unlock()
		return nil
	}
	done := g.runDone
	g.quiet = true
	g.mu.Unlock()
	if err := g.gdb.Interrupt(); err != nil {
		return fmt.Errorf("qemu: pause: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qemu: pause: %w", ctx.Err())
	case <-time.After(opTimeout):
		return fmt.Errorf("qemu: pause: no stop reply in %v", opTimeout)
	}
}

// Resume lets every vCPU run: vCont;c through the stub when it is
// attached, else QMP cont of a guest Pause stopped. Without the stub, a
// guest found paused is not resumed (it is not this Guest's to run).
func (g *Guest) Resume(ctx context.Context) error {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return err
	}
	if g.gdb == nil {
		if !g.qmpPaused {
			return nil
		}
		if err := monExec(ctx, g.mon, "cont"); err != nil {
			return fmt.Errorf("qemu: resume: %w", err)
		}
		g.mu.Lock()
		g.qmpPaused = false
		g.mu.Unlock()
		return nil
	}
	return g.resume()
}

func (g *Guest) resume() error {
	g.mu.Lock()
	if g.running {
		g.mu.Unlock()
		return nil
	}
	g.running, g.runDone, g.quiet = true, make(chan struct{}), false
	g.mu.Unlock()
	if err := g.gdb.Send("vCont;c"); err != nil {
		g.mu.Lock()
		g.running = false
		g.mu.Unlock()
		return err
	}
	return nil
}

// Step executes one instruction on vCPU cpu, the others staying stopped,
// and returns the state after it. The guest must be paused. QEMU masks
// interrupts and timers during the step (its default qemu.sstep flags).
func (g *Guest) Step(ctx context.Context, cpu int) (vmi.CPU, error) {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return vmi.CPU{}, err
	}
	if err := g.attachStub(ctx); err != nil {
		return vmi.CPU{}, err
	}
	if cpu < 0 || cpu >= len(g.thread) {
		return vmi.CPU{}, fmt.Errorf("qemu: step: no vCPU %d", cpu)
	}
	g.mu.Lock()
	if g.running {
		g.mu.Unlock()
		return vmi.CPU{}, errors.New("qemu: step: the guest is running (Pause first)")
	}
	g.running, g.runDone, g.quiet = true, make(chan struct{}), true
	done := g.runDone
	g.mu.Unlock()
	if err := g.gdb.Send(fmt.Sprintf("vCont;s:%x", g.thread[cpu])); err != nil {
		return vmi.CPU{}, err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return vmi.CPU{}, errors.Join(fmt.Errorf("qemu: step: %w", ctx.Err()), g.pause(context.WithoutCancel(ctx)))
	}
	return g.regs(ctx, cpu)
}

// RunOthers lets every vCPU but cpu run for d while cpu stays stopped
// (vCont with a continue action for each other thread only), then stops
// the guest again (vmi.OthersRunner). A stop that comes first (one of
// them hit a trap) ends the run early and is not reported as an event:
// the caller arms no trap while it steps. With one vCPU it does nothing.
func (g *Guest) RunOthers(ctx context.Context, cpu int, d time.Duration) (int, error) {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return 0, err
	}
	if err := g.attachStub(ctx); err != nil {
		return 0, err
	}
	if cpu < 0 || cpu >= len(g.thread) {
		return 0, fmt.Errorf("qemu: run others: no vCPU %d", cpu)
	}
	if len(g.thread) < 2 {
		return 0, nil
	}
	pkt := "vCont"
	for i, th := range g.thread {
		if i != cpu {
			pkt += fmt.Sprintf(";c:%x", th)
		}
	}
	g.mu.Lock()
	if g.running {
		g.mu.Unlock()
		return 0, errors.New("qemu: run others: the guest is running (Pause first)")
	}
	g.running, g.runDone, g.quiet = true, make(chan struct{}), true
	done := g.runDone
	g.mu.Unlock()
	if err := g.gdb.Send(pkt); err != nil {
		return 0, err
	}
	select {
	case <-done:
		return len(g.thread) - 1, nil
	case <-ctx.Done():
	case <-time.After(d):
	}
	return len(g.thread) - 1, errors.Join(ctx.Err(), g.pause(context.WithoutCancel(ctx)))
}

// withStopped runs f with the guest stopped through the stub (attached
// first if it is not): if it runs, it is paused for the time of f and
// resumed after.
func (g *Guest) withStopped(ctx context.Context, f func() error) error {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return err
	}
	if err := g.attachStub(ctx); err != nil {
		return err
	}
	g.mu.Lock()
	wasRunning := g.running
	g.mu.Unlock()
	if wasRunning {
		if err := g.pause(ctx); err != nil {
			return err
		}
	}
	err := f()
	if wasRunning {
		err = errors.Join(err, g.resume())
	}
	return err
}

// Session is what Guest.Exclusive hands over: the stub client, the
// thread id of each vCPU and the register layout.
type Session struct {
	GDB     *GDB
	Threads []int // GDB thread id per vCPU index
	Target  *Target
	// Regs reads the registers of a vCPU (Guest.Regs, which would wait
	// for f to end).
	Regs func(ctx context.Context, cpu int) (vmi.CPU, error)
}

// Exclusive runs f with the guest stopped (paused for the time of f if it
// ran) and no other operation of this Guest in flight. It is the seam
// vmi/qemu/control writes through; this package itself sends no packet
// that writes guest memory or registers. f must not resume the guest,
// detach or close the stub.
func (g *Guest) Exclusive(ctx context.Context, f func(s Session) error) error {
	return g.withStopped(ctx, func() error {
		return f(Session{GDB: g.gdb, Threads: append([]int(nil), g.thread...), Target: g.target, Regs: g.regs})
	})
}
