package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vmscope/vmscope/vmi/qemu/libvirt"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt/libvirttest"
)

// psAgrees compares the processes of `mem ps --format json` with the
// guest's own ps (its console): every user process with its ppid and
// argv, no other one.
func psAgrees(t *testing.T, what, out string, d *libvirttest.Domain) {
	t.Helper()
	var ps struct {
		Processes []struct {
			PID    int      `json:"pid"`
			PPID   int      `json:"ppid"`
			Args   []string `json:"args"`
			Kernel bool     `json:"kernel_thread"`
		} `json:"processes"`
	}
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, tail(out, 1000))
	}
	type row struct {
		ppid int
		args string
	}
	want, got := map[int]row{}, map[int]row{}
	for _, p := range d.Truth(t).PS {
		if !strings.HasPrefix(p.Args, "[") {
			want[p.PID] = row{p.PPID, p.Args}
		}
	}
	for _, p := range ps.Processes {
		if !p.Kernel {
			got[p.PID] = row{p.PPID, strings.Join(p.Args, " ")}
		}
	}
	for pid, w := range want {
		if g, ok := got[pid]; !ok || g != w {
			t.Errorf("%s: pid %d: %+v (found %v), guest ps %+v", what, pid, g, ok, w)
		}
	}
	for pid, g := range got {
		if _, ok := want[pid]; !ok {
			t.Errorf("%s: pid %d %+v, not in the guest's ps", what, pid, g)
		}
	}
	if len(want) < 8 {
		t.Errorf("guest ps: only %d user processes", len(want))
	}
	t.Logf("%s: %d user processes equal to the guest's ps", what, len(want))
}

// TestLibvirtMemPsAndDump: on a libvirt domain booted from the guest
// fixture, `mem ps --guest libvirt:DOM` reads memory from the domain's
// QEMU process with no GDB stub (QEMU listens on no TCP socket at any
// moment of the command, watched every 2 ms) and agrees with the guest's
// own ps; `guest dump --guest libvirt:DOM` writes the dump through libvirt
// (not QMP dump-guest-memory through the pass-through, which would crash
// libvirtd 9.0: libvirtd still answers and the domain runs afterwards),
// and `mem ps` on that dump agrees with the guest's ps too.
func TestLibvirtMemPsAndDump(t *testing.T) {
	d := libvirttest.Start(t, libvirttest.Config{})
	pid, err := libvirt.DomainPID(d.Name)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := libvirttest.ListeningTCP(pid); err != nil || len(l) != 0 {
		t.Fatalf("QEMU listens on TCP before the command: %v %v", l, err)
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	var seen []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if l, _ := libvirttest.ListeningTCP(pid); len(l) > 0 {
				seen = append(seen, l...)
			}
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	t0 := time.Now()
	out, errOut, code := vmscope(t, "mem", "ps", "--format", "json", "--guest", d.Spec())
	took := time.Since(t0)
	close(done)
	wg.Wait()
	if code != 0 {
		t.Fatalf("mem ps --guest %s: exit %d: %s", d.Spec(), code, errOut)
	}
	if len(seen) > 0 {
		t.Errorf("QEMU listened on TCP %v during mem ps --guest: a GDB stub on the process path", seen)
	}
	psAgrees(t, "mem ps --guest "+d.Spec(), out, d)

	dump := filepath.Join(t.TempDir(), "g.elf")
	t1 := time.Now()
	out, errOut, code = vmscope(t, "guest", "dump", "--guest", d.Spec(), dump)
	dumpTook := time.Since(t1)
	if code != 0 {
		t.Fatalf("guest dump --guest %s: exit %d: %s %s", d.Spec(), code, out, errOut)
	}
	if s := d.State(t); s != golibvirt.DomainRunning {
		t.Errorf("libvirt state %d after guest dump, want running", s)
	}
	out, errOut, code = vmscope(t, "mem", "ps", "--format", "json", dump)
	if code != 0 {
		t.Fatalf("mem ps %s: exit %d: %s", dump, code, errOut)
	}
	psAgrees(t, "mem ps on guest dump's file", out, d)
	t.Logf("mem ps --guest libvirt: %v; guest dump: %v", took.Round(time.Millisecond), dumpTook.Round(time.Millisecond))
}
