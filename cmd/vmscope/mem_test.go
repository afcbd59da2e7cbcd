package main

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"

	"context"
	"os"
	"path/filepath"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// guestDump is the guest fixture's ELF dump of a boot mode (the library
// tests in vmi/linux check the walks against the guest's own view; this
// one checks the CLI says what the library says).
func guestDump(t *testing.T, mode string) string {
	t.Helper()
	return fixture.GuestPath(t, mode, "guest.elf")
}

type libView struct {
	tasks []linux.Task
	files []linux.File
}

func library(t *testing.T, dump string) libView {
	s, err := snapshot.Open(dump)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k, err := linux.Discover(context.Background(), s, linux.WithCPUs(s.CPUs()))
	if err != nil {
		t.Fatal(err)
	}
	tasks, _, err := k.Tasks(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	files, _, err := k.Files(context.Background(), tasks, 1)
	if err != nil {
		t.Fatal(err)
	}
	return libView{tasks, files}
}

// TestMemCommands drives the mem verbs through cobra on the guest fixture
// and checks them against the guest's own view.
func TestMemCommands(t *testing.T) {
	for _, mode := range []string{"kaslr", "nokaslr"} {
		t.Run(mode, func(t *testing.T) {
			dump := guestDump(t, mode)
			lib := library(t, dump)

			out, stderr, code := vmscope(t, "mem", "ps", "--format", "json", dump)
			if code != 0 {
				t.Fatalf("mem ps: exit %d: %s", code, stderr)
			}
			var ps struct {
				Processes []struct {
					PID  int      `json:"pid"`
					PPID int      `json:"ppid"`
					Args []string `json:"args"`
				} `json:"processes"`
			}
			if err := json.Unmarshal([]byte(out), &ps); err != nil {
				t.Fatal(err)
			}
			if len(ps.Processes) != len(lib.tasks) || len(ps.Processes) < 10 {
				t.Fatalf("mem ps: %d processes, library %d", len(ps.Processes), len(lib.tasks))
			}
			for i, p := range ps.Processes {
				w := lib.tasks[i]
				if w.PID != p.PID || w.PPID != p.PPID || strings.Join(p.Args, " ") != strings.Join(w.Args, " ") {
					t.Errorf("mem ps: pid %d ppid %d args %q; library %+v", p.PID, p.PPID, p.Args, w)
				}
			}

			out, stderr, code = vmscope(t, "mem", "files", "--format", "ndjson", "--pid", "1", dump)
			if code != 0 {
				t.Fatalf("mem files: exit %d: %s", code, stderr)
			}
			var got, want []string
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				var f struct {
					Path string `json:"path"`
				}
				if err := json.Unmarshal([]byte(l), &f); err != nil {
					t.Fatal(err)
				}
				got = append(got, f.Path)
			}
			for _, f := range lib.files {
				want = append(want, f.Path)
			}
			if !strings.Contains(strings.Join(want, " "), "/dev/console") {
				t.Errorf("pid 1 fds %v", want)
			}
			sort.Strings(got)
			sort.Strings(want)
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("mem files --pid 1: %v, library %v", got, want)
			}

			for _, verb := range []string{"info", "modules", "mounts"} {
				out, stderr, code = vmscope(t, "mem", verb, dump)
				if code != 0 || out == "" {
					t.Errorf("mem %s: exit %d: %s", verb, code, stderr)
				}
			}
			if !strings.Contains(out, "/dev/pts") {
				t.Errorf("mem mounts:\n%s", out)
			}
			if _, _, code := vmscope(t, "mem", "ps", "--format", "xml", dump); code != 2 {
				t.Errorf("bad --format: exit %d", code)
			}
		})
	}
}

// TestMemVmlinux: the distribution's vmlinuz (a bzImage whose payload is the
// stripped vmlinux) gives the types; every answer equals the one made with
// the types found in memory.
func TestMemVmlinux(t *testing.T) {
	dump := guestDump(t, "kaslr")
	vmlinuz := guestFile(t, "vmlinuz")
	out, errOut, code := vmscope(t, "mem", "info", dump, "--vmlinux", vmlinuz)
	if code != 0 || !strings.Contains(out, "BTF file") {
		t.Fatalf("mem info --vmlinux: exit %d, %s%s", code, out, errOut)
	}
	for _, verb := range []string{"ps", "files", "mounts", "modules"} {
		a, _, ca := vmscope(t, "mem", verb, "--format", "json", dump, "--vmlinux", vmlinuz)
		b, _, cb := vmscope(t, "mem", verb, "--format", "json", dump)
		if ca != 0 || cb != 0 || a != b {
			t.Errorf("mem %s: with --vmlinux (exit %d) and without (exit %d) differ", verb, ca, cb)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("not a kernel"), 0o644)
	if _, errOut, code := vmscope(t, "mem", "ps", dump, "--vmlinux", bad); code != 2 || !strings.Contains(errOut, "kernel image") {
		t.Errorf("bad --vmlinux: exit %d, %q", code, errOut)
	}
}
