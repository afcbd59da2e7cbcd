package cfi

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// TestVMISourceRefusedByQEMUStub runs the vmi source on the real QEMU TCG
// guest through the GDB stub: the stub traps one address, not a page, so
// the source must fail with ErrNeedsPageTraps, emit nothing, and leave no
// trap and the guest running. Then the TCG plugin's real edges of the
// same guest (each distinct page transition once, in first-seen order)
// are replayed as executions (from page, then to page) through the re-arm
// state machine: its transitions must equal the per-vCPU reference
// (code pages in order, runs merged), and every plugin edge between two
// code pages must be among them.
func TestVMISourceRefusedByQEMUStub(t *testing.T) {
	g := plainGuest(t) // the shared plain boot
	qg, _, regions := attach(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var got collector
	err := (&VMISource{Tracer: qg, Regions: regions}).Run(ctx, got.emit)
	if !errors.Is(err, ErrNeedsPageTraps) {
		t.Errorf("Run on the QEMU stub: %v, want ErrNeedsPageTraps", err)
	}
	if !errors.Is(err, vmi.ErrBadTrap) {
		t.Errorf("Run on the QEMU stub: %v, want the stub's refusal (vmi.ErrBadTrap) in it", err)
	}
	if len(got.evs) != 0 {
		t.Errorf("%d events emitted", len(got.evs))
	}
	if bps := qg.Breakpoints(); len(bps) != 0 {
		t.Errorf("traps left: %v", bps)
	}
	if err := qg.Close(ctx); err != nil {
		t.Fatal(err)
	}
	g.running(t)

	// The plugin's page sequence through the state machine.
	var plug collector
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	if err := (&PluginSource{Socket: g.Plugin}).Run(pctx, plug.emit); err != nil {
		t.Fatal(err)
	}
	plug.mu.Lock()
	evs := append([]Event(nil), plug.evs...)
	plug.mu.Unlock()
	code := regions.codePages()
	codeSet := map[vmi.VA]bool{}
	for _, va := range code {
		codeSet[va] = true
	}
	start := map[int]vmi.VA{}
	var run []xstep
	edges := map[trans]bool{} // the plugin's edges between two code pages
	for _, ev := range evs {
		if ev.From != 0 {
			run = append(run, xstep{ev.CPU, ev.From})
			if codeSet[ev.From] && codeSet[ev.Page] && ev.From != ev.Page {
				edges[trans{ev.CPU, ev.From, ev.Page}] = true
			}
		}
		run = append(run, xstep{ev.CPU, ev.Page})
	}
	for i, x := range run {
		if codeSet[x.page] {
			start[x.cpu] = x.page
			run = run[i+1:]
			break
		}
	}
	if len(start) == 0 {
		t.Fatalf("the plugin reported %d events, none on a code page", len(evs))
	}
	seen := simulate(t, code, start, run)
	var n int
	for cpu, st := range start {
		var mine []trans
		for _, x := range seen {
			if x.cpu == cpu {
				mine = append(mine, x)
			}
		}
		want := reference(cpu, st, codeSet, run)
		n += len(want)
		if len(mine) != len(want) {
			t.Errorf("vCPU %d: %d transitions, reference %d", cpu, len(mine), len(want))
			continue
		}
		for i := range want {
			if mine[i] != want[i] {
				t.Errorf("vCPU %d transition %d: %+v, reference %+v", cpu, i, mine[i], want[i])
				break
			}
		}
	}
	reported := map[trans]bool{}
	for _, x := range seen {
		reported[x] = true
	}
	var missed int
	for e := range edges {
		if !reported[e] {
			missed++
		}
	}
	if missed != 0 || len(edges) < 100 {
		t.Errorf("%d of the plugin's %d code-page edges not reported by the re-arm machine", missed, len(edges))
	}
	if n < 100 {
		t.Errorf("only %d transitions in the plugin's sequence (%d events)", n, len(evs))
	}
	t.Logf("plugin: %d edges (%d between code pages), %d transitions replayed", len(evs), len(edges), n)
}
