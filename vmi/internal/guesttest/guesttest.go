// Package guesttest gives vmi tests the real-guest fixture that
// testdata/guest/build.sh builds: a Debian cloud kernel booted under QEMU
// (TCG) on a busybox initramfs with a known scenario, dumped by QEMU itself
// (ELF and kdump-zlib) with KASLR on and off, and the guest's own view of
// itself (ps, /proc/PID/status and fd, modules, mounts, kallsyms) printed
// on its serial console as ground truth.
//
// Path and Load skip a test when the fixture is missing and fail it under
// CI=true (as internal/fixture does); ParseConsole turns console.log into
// Go values; Boot starts the guest live for tests that need QMP or the GDB
// stub.
package guesttest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// The boot modes the fixture holds, each a folder of Dir.
const (
	KASLR   = "kaslr"   // QEMU's default CPU (4-level paging), KASLR on
	NoKASLR = "nokaslr" // the same with "nokaslr" on the kernel command line
	LA57    = "la57"    // -cpu max: 5-level paging, KASLR on
)

// Modes lists every boot mode, for tests that run on each.
var Modes = []string{KASLR, NoKASLR, LA57}

// Files of a boot mode's folder.
const (
	ConsoleLog = "console.log"
	ELFDump    = "guest.elf"
	KdumpDump  = "guest.kdump"
	Registers  = "registers.txt" // HMP info registers at dump time
	GVA2GPA    = "gva2gpa.txt"   // NAME VA GPA lines ("-" when unmapped)
	InfoMem    = "infomem.txt"   // HMP info mem; empty in mode LA57
)

// Dir is the fixture folder (fixture.GuestDir).
func Dir() string { return fixture.GuestDir() }

// Path returns the path of a file of the fixture (elems joined under Dir,
// e.g. Path(t, KASLR, ELFDump), Path(t, "vmlinuz")), or skips/fails
// (fixture.GuestPath).
func Path(t testing.TB, elems ...string) string {
	t.Helper()
	return fixture.GuestPath(t, elems...)
}

// Load parses the ground truth of a boot mode, or skips/fails.
func Load(t testing.TB, mode string) *Truth {
	t.Helper()
	f, err := os.Open(Path(t, mode, ConsoleLog))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr, err := ParseConsole(f)
	if err != nil {
		t.Fatalf("%s: %v", f.Name(), err)
	}
	return tr
}

// Process is a row of the guest's `ps -o pid,ppid,comm,args`.
type Process struct {
	PID, PPID int
	Comm      string
	Args      string // argv joined by single spaces; "[comm]" for kernel threads
}

// Module is a line of /proc/modules.
type Module struct {
	Name  string
	Size  uint64
	Refs  int
	Deps  []string
	State string // Live, Loading, Unloading
	Addr  uint64
}

// Mount is a line of /proc/mounts.
type Mount struct {
	Source, Target, FSType, Options string
}

// FD is an entry of `ls -l /proc/PID/fd`.
type FD struct {
	Num    int
	Target string // "/tmp/held.txt", "pipe:[1234]", "socket:[5678]", "/dev/console"
}

// Task is a thread of a process: /proc/PID/task/TID/comm.
type Task struct {
	TID  int
	Comm string
}

// Sym is a line of /proc/kallsyms.
type Sym struct {
	Addr   uint64
	Type   byte
	Name   string
	Module string // "" for the kernel itself
}

// Truth is the guest's own view of itself, from the fixture's console log.
type Truth struct {
	// Sections holds every section's lines by name ("ps", "status 1", ...).
	Sections map[string][]string
	// Scenario maps the scenario's roles (init, sleep, worker, pipecat, nc,
	// syslogd, tree, threader) to their pids.
	Scenario map[string]int
	Version  string // /proc/version: the banner
	Cmdline  string // /proc/cmdline
	// PS is the process list without the ps process that printed it, so it
	// is exactly the set alive at dump time; Threads is `ps -T` likewise.
	PS, Threads []Process
	Status      map[int]map[string]string // /proc/PID/status fields of user processes
	FDs         map[int][]FD
	Tasks       map[int][]Task
	Modules     []Module
	Mounts      []Mount
	Kallsyms    []Sym
	Ready       bool
}

// Symbol returns the address of the first kernel (not module) symbol name.
func (t *Truth) Symbol(name string) (uint64, bool) {
	for _, s := range t.Kallsyms {
		if s.Name == name && s.Module == "" {
			return s.Addr, true
		}
	}
	return 0, false
}

// Process returns the ps row of pid.
func (t *Truth) Process(pid int) (Process, bool) {
	for _, p := range t.PS {
		if p.PID == pid {
			return p, true
		}
	}
	return Process{}, false
}

const (
	beginMark = "=== BEGIN "
	endMark   = "=== END "
	markTail  = " ==="
)

// ParseConsole parses the fixture's console log. Kernel messages outside
// the sections are ignored; an unterminated section is an error.
func ParseConsole(r io.Reader) (*Truth, error) {
	t := &Truth{
		Sections: map[string][]string{},
		Scenario: map[string]int{},
		Status:   map[int]map[string]string{},
		FDs:      map[int][]FD{},
		Tasks:    map[int][]Task{},
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	cur := ""
	var lines []string
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		// a marker may follow terminal control bytes on its line
		if i := strings.Index(line, "=== "); i > 0 && cur == "" {
			line = line[i:]
		}
		switch {
		case line == ReadyMarker:
			t.Ready = true
		case strings.HasPrefix(line, beginMark) && strings.HasSuffix(line, markTail):
			cur = strings.TrimSuffix(strings.TrimPrefix(line, beginMark), markTail)
			lines = nil
		case cur != "" && line == endMark+cur+markTail:
			t.Sections[cur] = lines
			cur = ""
		case cur != "":
			lines = append(lines, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur != "" {
		return nil, fmt.Errorf("guesttest: section %q not terminated", cur)
	}
	for name, lines := range t.Sections {
		if err := t.parseSection(name, lines); err != nil {
			return nil, fmt.Errorf("guesttest: section %q: %w", name, err)
		}
	}
	return t, nil
}

func (t *Truth) parseSection(name string, lines []string) error {
	kind, arg, _ := strings.Cut(name, " ")
	var pid int
	if arg != "" {
		var err error
		if pid, err = strconv.Atoi(arg); err != nil {
			return err
		}
	}
	var err error
	switch kind {
	case "scenario":
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) != 2 {
				return fmt.Errorf("line %q", l)
			}
			if t.Scenario[f[0]], err = strconv.Atoi(f[1]); err != nil {
				return err
			}
		}
	case "version":
		t.Version = strings.Join(lines, "\n")
	case "cmdline":
		t.Cmdline = strings.Join(lines, "\n")
	case "ps":
		t.PS, err = parsePS(lines)
	case "ps-threads":
		t.Threads, err = parsePS(lines)
	case "status":
		m := map[string]string{}
		for _, l := range lines {
			k, v, ok := strings.Cut(l, ":")
			if ok {
				m[k] = strings.TrimSpace(v)
			}
		}
		t.Status[pid] = m
	case "fd":
		var fds []FD
		for _, l := range lines {
			// lrwx------    1 0        0               64 Jan  1 00:00 3 -> /tmp/held.txt
			left, target, ok := strings.Cut(l, " -> ")
			if !ok {
				continue // "total 0"
			}
			f := strings.Fields(left)
			n, err := strconv.Atoi(f[len(f)-1])
			if err != nil {
				return fmt.Errorf("line %q: %w", l, err)
			}
			fds = append(fds, FD{Num: n, Target: target})
		}
		t.FDs[pid] = fds
	case "tasks":
		var ts []Task
		for _, l := range lines {
			id, comm, _ := strings.Cut(l, " ")
			tid, err := strconv.Atoi(id)
			if err != nil {
				return fmt.Errorf("line %q: %w", l, err)
			}
			ts = append(ts, Task{TID: tid, Comm: comm})
		}
		t.Tasks[pid] = ts
	case "modules":
		for _, l := range lines {
			// name size refs deps state addr
			f := strings.Fields(l)
			if len(f) < 6 {
				return fmt.Errorf("line %q", l)
			}
			m := Module{Name: f[0], State: f[4]}
			if m.Size, err = strconv.ParseUint(f[1], 10, 64); err != nil {
				return err
			}
			if m.Refs, err = strconv.Atoi(f[2]); err != nil {
				return err
			}
			for _, d := range strings.Split(f[3], ",") {
				if d != "" && d != "-" {
					m.Deps = append(m.Deps, d)
				}
			}
			if m.Addr, err = strconv.ParseUint(strings.TrimPrefix(f[5], "0x"), 16, 64); err != nil {
				return err
			}
			t.Modules = append(t.Modules, m)
		}
	case "mounts":
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) < 4 {
				return fmt.Errorf("line %q", l)
			}
			t.Mounts = append(t.Mounts, Mount{Source: f[0], Target: f[1], FSType: f[2], Options: f[3]})
		}
	case "kallsyms":
		t.Kallsyms = make([]Sym, 0, len(lines))
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) < 3 || len(f[1]) != 1 {
				return fmt.Errorf("line %q", l)
			}
			a, err := strconv.ParseUint(f[0], 16, 64)
			if err != nil {
				return fmt.Errorf("line %q: %w", l, err)
			}
			s := Sym{Addr: a, Type: f[1][0], Name: f[2]}
			if len(f) > 3 {
				s.Module = strings.Trim(f[3], "[]")
			}
			t.Kallsyms = append(t.Kallsyms, s)
		}
	}
	return err
}

// parsePS parses busybox `ps -o pid,ppid,comm,args` and drops the row of
// the ps process itself.
func parsePS(lines []string) ([]Process, error) {
	var ps []Process
	for i, l := range lines {
		f := strings.Fields(l)
		if i == 0 && len(f) > 0 && f[0] == "PID" {
			continue
		}
		if len(f) < 3 {
			return nil, fmt.Errorf("line %q", l)
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", l, err)
		}
		ppid, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", l, err)
		}
		p := Process{PID: pid, PPID: ppid, Comm: f[2], Args: strings.Join(f[3:], " ")}
		// busybox shows "{comm} argv" when comm is not argv[0]'s base name.
		p.Args = strings.TrimPrefix(p.Args, "{"+p.Comm+"} ")
		if p.Comm == "ps" { // busybox runs ps in a forked shell: its args are the shell's
			continue
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// ModeConfig is how a boot mode boots: its extra kernel command line and
// QEMU CPU model.
func ModeConfig(mode string) (appendArgs, cpu string) {
	switch mode {
	case NoKASLR:
		return "nokaslr", ""
	case LA57:
		return "", "max"
	}
	return "", ""
}

// Live boots the fixture's kernel and initramfs in mode for a test, waits
// for the scenario's READY marker, and quits QEMU when the test ends. It
// skips (fails under CI) when the fixture or QEMU is missing. Booting takes
// about 20 s under TCG.
func Live(t testing.TB, mode string) *Guest {
	t.Helper()
	fixture.Tool(t, "qemu-system-x86_64")
	kernel, initrd := Path(t, "vmlinuz"), Path(t, "initrd.gz")
	appendArgs, cpu := ModeConfig(mode)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	g, err := Boot(ctx, Config{Kernel: kernel, Initrd: initrd, Append: appendArgs, CPU: cpu, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Quit() })
	return g
}

// PID is the QEMU process of a booted guest.
func (g *Guest) PID() int { return g.cmd.Process.Pid }

// Execute runs one QMP command on the test's own QMP connection (so that
// a Guest is a qemu.Monitor, with HMP).
func (g *Guest) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	return g.QMP(ctx, command, args)
}

// PID is the QEMU process of a Shared guest.
func (s *Shared) PID() int { return s.cmd.Process.Pid }
