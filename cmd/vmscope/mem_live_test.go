package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi/memtest"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// TestMemLiveEqualsDump pauses the fixture guest, takes a
// dump-guest-memory at that moment, checks that the live guest's memory
// and vCPUs agree with the dump's (the memory conformance kit), runs every
// mem analysis live (--guest --pause), through the GDB stub and from the
// QEMU process (qemu:pid=…), and on the dump, and checks that the answers
// are identical; then that the guest's scenario processes are there with
// their argv, and that the guest runs again afterwards.
func TestMemLiveEqualsDump(t *testing.T) {
	l := liveGuest(t)
	ctx := context.Background()
	if err := l.ref.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(t.TempDir(), "now.elf")
	if err := l.ref.DumpGuestMemory(ctx, dump, "elf"); err != nil {
		t.Fatal(err)
	}
	for name, spec := range l.specs() {
		t.Run(name, func(t *testing.T) { memLiveEqualsDump(t, spec, dump) })
	}
	st, err := l.ref.Status(ctx)
	if err != nil || st.Status != "paused" {
		t.Errorf("after --pause on a paused guest: %+v %v, want it left paused", st, err)
	}
	if err := l.ref.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	// --pause on a running guest pauses it for the analysis and resumes it.
	for _, spec := range l.specs() {
		if _, errOut, code := vmscope(t, "mem", "modules", "--guest", spec, "--pause"); code != 0 {
			t.Fatalf("mem modules --guest %s --pause: exit %d: %s", spec, code, errOut)
		}
		l.mustRun(t)
	}
}

// memLiveEqualsDump runs the memory conformance kit and every mem
// analysis on the paused guest spec and on its dump.
func memLiveEqualsDump(t *testing.T, spec, dump string) {
	memoryAgrees(t, spec, dump)
	for _, verb := range [][]string{{"ps"}, {"ps", "-t"}, {"modules"}, {"files"}, {"mounts"}} {
		live, errLive, code := vmscope(t, append(append([]string{"mem"}, verb...), "--format", "json", "--guest", spec, "--pause")...)
		if code != 0 {
			t.Fatalf("mem %v --guest: exit %d: %s", verb, code, errLive)
		}
		fromDump, errDump, code := vmscope(t, append(append([]string{"mem"}, verb...), "--format", "json", dump)...)
		if code != 0 {
			t.Fatalf("mem %v DUMP: exit %d: %s", verb, code, errDump)
		}
		if live != fromDump {
			t.Errorf("mem %v: live and dump answers differ:\n%s", verb, firstDiff(live, fromDump))
		}
		if verb[0] == "ps" && len(verb) == 1 {
			var doc struct {
				Processes []struct {
					Pid  int      `json:"pid"`
					Args []string `json:"args"`
				} `json:"processes"`
			}
			if err := json.Unmarshal([]byte(live), &doc); err != nil {
				t.Fatal(err)
			}
			found := map[string]bool{}
			for _, p := range doc.Processes {
				found[strings.Join(p.Args, " ")] = true
			}
			// The fixture's scenario (testdata/guest/init.sh).
			for _, want := range []string{"sleep 31337", "/bin/sh /tmp/worker.sh alpha beta", "sleep 100001", "nc -l -p 4444"} {
				if !found[want] {
					t.Errorf("process %q not found live", want)
				}
			}
		}
	}
}

// memoryAgrees checks with the memory conformance kit that the paused
// guest, read through the GDB stub, and its dump agree: the memory map,
// sampled pages, odd reads, holes and vCPU registers. Closing the
// connection leaves the paused guest paused.
func memoryAgrees(t *testing.T, spec, dump string) {
	t.Helper()
	ctx := context.Background()
	g, err := qemu.Open(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := g.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	snap, err := snapshot.Open(dump)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	memtest.Agree(t, g, snap, memtest.Names("live", "dump"), memtest.Context(ctx))
}

// firstDiff shows the first lines where a (live) and b (dump) differ, with
// a little context.
func firstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	i := 0
	for i < len(la) && i < len(lb) && la[i] == lb[i] {
		i++
	}
	lo := max(i-3, 0)
	part := func(l []string) string { return strings.Join(l[min(lo, len(l)):min(i+6, len(l))], "\n") }
	return fmt.Sprintf("line %d of %d / %d\n--- live\n%s\n--- dump\n%s", i+1, len(la), len(lb), part(la), part(lb))
}

// TestMemPsProcessNoStub runs `mem ps` on the running fixture guest with a
// qemu: spec that gives no GDB stub: registers from HMP, memory from the
// QEMU process. The guest never stops (QEMU sends no STOP event) and the
// scenario's processes are found.
func TestMemPsProcessNoStub(t *testing.T) {
	l := liveGuest(t)
	ctx := context.Background()
	if _, err := l.ref.Status(ctx); err != nil {
		t.Fatal(err)
	}
	l.ref.Events() // forget earlier ones
	spec := strings.Split(l.procSpec, ",gdb=")[0]
	out, errOut, code := vmscope(t, "mem", "ps", "--guest", spec)
	if code != 0 {
		t.Fatalf("mem ps --guest %s: exit %d: %s", spec, code, errOut)
	}
	if !strings.Contains(out, "sleep 31337") {
		t.Errorf("mem ps lacks the scenario's sleep 31337:\n%s", out)
	}
	if _, err := l.ref.Status(ctx); err != nil {
		t.Fatal(err)
	}
	for _, e := range l.ref.Events() {
		if e.Name == "STOP" || e.Name == "RESUME" {
			t.Errorf("QEMU sent %s during mem ps through the process", e.Name)
		}
	}
	l.mustRun(t)
}
