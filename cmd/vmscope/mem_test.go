package main

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

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

			checkAgainstConsole(t, mode, dump)
			if _, _, code := vmscope(t, "mem", "ps", "--format", "xml", dump); code != 2 {
				t.Errorf("bad --format: exit %d", code)
			}
		})
	}
}

// consoleSection returns the lines of section name ("=== BEGIN name ==="
// to "=== END name ===") of the guest's console log: what the guest printed
// of itself (cat /proc/modules, /proc/mounts...) before it was dumped.
func consoleSection(t *testing.T, mode, name string) []string {
	t.Helper()
	b, err := os.ReadFile(fixture.GuestPath(t, mode, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimRight(l, "\r")
		switch {
		case strings.HasSuffix(l, "=== BEGIN "+name+" ==="):
			in = true
		case l == "=== END "+name+" ===" && in:
			return out
		case in:
			out = append(out, l)
		}
	}
	t.Fatalf("console.log: no complete section %q", name)
	return nil
}

// checkAgainstConsole compares mem info, modules and mounts, in JSON and as
// tables, with the guest's console: the /proc/version banner, the address
// of startup_64 in /proc/kallsyms (_text) and the slide from the default
// link address, every line of /proc/modules and of /proc/mounts in order.
func checkAgainstConsole(t *testing.T, mode, dump string) {
	t.Helper()
	version := consoleSection(t, mode, "version")
	var text uint64
	for _, l := range consoleSection(t, mode, "kallsyms") {
		if f := strings.Fields(l); len(f) == 3 && f[2] == "startup_64" {
			text, _ = strconv.ParseUint(f[0], 16, 64)
		}
	}
	out, stderr, code := vmscope(t, "mem", "info", "--format", "json", dump)
	if code != 0 || stderr != "" {
		t.Fatalf("mem info: exit %d: %s", code, stderr)
	}
	var info struct {
		Kernel string `json:"kernel"`
		Text   string `json:"text"`
		Slide  string `json:"kaslr_slide"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	const linkText = 0xffffffff81000000 // x86-64 _text without KASLR
	if len(version) != 1 || info.Kernel != version[0] || text == 0 ||
		info.Text != fmt.Sprintf("%#x", text) || info.Slide != fmt.Sprintf("%#x", text-linkText) {
		t.Errorf("mem info: kernel %q text %s slide %s; guest %q, startup_64 %#x", info.Kernel, info.Text, info.Slide, version, text)
	}
	if table, _, _ := vmscope(t, "mem", "info", dump); !strings.Contains(table, "kernel:            "+version[0]+"\n") {
		t.Errorf("mem info table lacks the banner:\n%s", table)
	}

	// /proc/modules: name size refs deps state address.
	var want, got, gotTable []string
	for _, l := range consoleSection(t, mode, "modules") {
		f := strings.Fields(l)
		if len(f) < 6 {
			t.Fatalf("/proc/modules line %q", l)
		}
		want = append(want, strings.Join([]string{f[0], f[5], f[1], f[2], f[4]}, " "))
	}
	out, stderr, code = vmscope(t, "mem", "modules", "--format", "json", dump)
	if code != 0 || stderr != "" {
		t.Fatalf("mem modules: exit %d: %s", code, stderr)
	}
	var mods struct {
		Modules []struct {
			Name  string `json:"name"`
			Base  uint64 `json:"base"`
			Size  uint64 `json:"size"`
			Refs  int    `json:"refs"`
			State string `json:"state"`
		} `json:"modules"`
	}
	if err := json.Unmarshal([]byte(out), &mods); err != nil {
		t.Fatal(err)
	}
	for _, m := range mods.Modules {
		got = append(got, fmt.Sprintf("%s %#x %d %d %s", m.Name, m.Base, m.Size, m.Refs, m.State))
	}
	table, _, code := vmscope(t, "mem", "modules", dump)
	for _, l := range strings.Split(strings.TrimSpace(table), "\n")[1:] {
		f := strings.Fields(l)
		gotTable = append(gotTable, strings.Join([]string{f[0], f[1], f[2], f[3], f[4]}, " "))
	}
	if len(want) == 0 || strings.Join(got, "\n") != strings.Join(want, "\n") || strings.Join(gotTable, "\n") != strings.Join(want, "\n") || code != 0 {
		t.Errorf("mem modules:\n%s\ntable:\n%s\nguest /proc/modules:\n%s", strings.Join(got, "\n"), table, strings.Join(want, "\n"))
	}

	// /proc/mounts: source target fstype options.
	want, got, gotTable = nil, nil, nil
	for _, l := range consoleSection(t, mode, "mounts") {
		f := strings.Fields(l)
		if len(f) < 4 {
			t.Fatalf("/proc/mounts line %q", l)
		}
		want = append(want, strings.Join(f[:4], " "))
	}
	out, stderr, code = vmscope(t, "mem", "mounts", "--format", "json", dump)
	if code != 0 || stderr != "" {
		t.Fatalf("mem mounts: exit %d: %s", code, stderr)
	}
	var mounts struct {
		Mounts []struct {
			Source, Target, FSType, Options string
		} `json:"mounts"`
	}
	if err := json.Unmarshal([]byte(out), &mounts); err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts.Mounts {
		got = append(got, strings.Join([]string{m.Source, m.Target, m.FSType, m.Options}, " "))
	}
	table, _, code = vmscope(t, "mem", "mounts", dump)
	for _, l := range strings.Split(strings.TrimSpace(table), "\n")[1:] {
		gotTable = append(gotTable, strings.Join(strings.Fields(l), " "))
	}
	if len(want) < 5 || strings.Join(got, "\n") != strings.Join(want, "\n") || strings.Join(gotTable, "\n") != strings.Join(want, "\n") || code != 0 {
		t.Errorf("mem mounts:\n%s\ntable:\n%s\nguest /proc/mounts:\n%s", strings.Join(got, "\n"), table, strings.Join(want, "\n"))
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

// TestMemProblemsSummary corrupts the guest's last task_struct in a copy of
// the ELF dump (its first 4 KiB zeroed, found from mem ps, the direct map
// base of mem info and the dump's program headers): mem ps and mem files
// list the problems in JSON, print a one-line summary on stderr in every
// format, and exit 2.
func TestMemProblemsSummary(t *testing.T) {
	dump := guestDump(t, "kaslr")
	out, _, code := vmscope(t, "mem", "ps", "--format", "json", dump)
	var ps struct {
		Processes []struct {
			Addr uint64 `json:"addr"`
		} `json:"processes"`
	}
	if err := json.Unmarshal([]byte(out), &ps); code != 0 || err != nil || len(ps.Processes) == 0 {
		t.Fatalf("mem ps: exit %d, %v", code, err)
	}
	out, _, _ = vmscope(t, "mem", "info", "--format", "json", dump)
	var info struct {
		PageOffset string `json:"page_offset_base"`
	}
	json.Unmarshal([]byte(out), &info)
	base, err := strconv.ParseUint(strings.TrimPrefix(info.PageOffset, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("page_offset_base %q", info.PageOffset)
	}
	pa := ps.Processes[len(ps.Processes)-1].Addr - base
	ef, err := elf.Open(dump)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(-1)
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && pa >= p.Paddr && pa+4096 <= p.Paddr+p.Filesz {
			off = int64(p.Off + pa - p.Paddr)
		}
	}
	ef.Close()
	if off < 0 {
		t.Fatalf("task_struct at %#x in no PT_LOAD", pa)
	}
	bad := filepath.Join(t.TempDir(), "bad.elf")
	if b, err := exec.Command("cp", "--sparse=always", dump, bad).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, b)
	}
	f, err := os.OpenFile(bad, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteAt(make([]byte, 4096), off)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"ps", "files"} {
		for _, format := range []string{"json", "ndjson", "table"} {
			out, stderr, code := vmscope(t, "mem", verb, "--format", format, bad)
			n := summary(t, "mem "+verb+" "+format, stderr)
			if code != 2 || n < 1 {
				t.Errorf("mem %s --format %s: exit %d, summary of %d problems", verb, format, code, n)
			}
			if format == "json" {
				var doc struct {
					Problems []json.RawMessage `json:"problems"`
				}
				if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Problems) != n {
					t.Errorf("mem %s json: %d problems in the document, summary says %d (%v)", verb, len(doc.Problems), n, err)
				}
			}
		}
	}
}
