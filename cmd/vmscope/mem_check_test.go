package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// rootkitFile is a file of the rootkit fixture (testdata/rootkit/build.sh).
func rootkitFile(t *testing.T, elems ...string) string {
	t.Helper()
	p := filepath.Join(append([]string{fixture.Root(), "testdata", "out-rootkit"}, elems...)...)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (run bash testdata/rootkit/build.sh)", p)
	}
	return p
}

// rootkitTruth reads the KEY=VALUE pairs of the "rootkit" section a
// rootkit fixture guest printed on its console (what the module did, with
// its addresses in hexadecimal).
func rootkitTruth(t *testing.T, console string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "=== BEGIN rootkit ===")
	j := strings.Index(s, "=== END rootkit ===")
	if i < 0 || j < i {
		t.Fatalf("%s: no rootkit section", console)
	}
	kv := map[string]string{}
	for _, f := range strings.Fields(s[i:j]) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

type checkDoc struct {
	Kernel   string `json:"kernel"`
	Findings []struct {
		Kind    string `json:"kind"`
		Address uint64 `json:"address"`
		Symbol  string `json:"symbol"`
		Owner   string `json:"owner"`
		Where   string `json:"where"`
	} `json:"findings"`
	Checks []struct {
		Name    string `json:"name"`
		Checked int    `json:"checked"`
		Skipped string `json:"skipped"`
	} `json:"checks"`
	Problems []any `json:"problems"`
}

// wantFindings is the kind@address set each scenario must give, from its
// console's ground truth.
func wantFindings(t *testing.T, scenario string, kv map[string]string) []string {
	t.Helper()
	a := func(k string) string {
		v, err := strconv.ParseUint(kv[k], 16, 64)
		if err != nil {
			t.Fatalf("truth %s=%q: %v", k, kv[k], err)
		}
		return strconv.FormatUint(v, 16)
	}
	switch scenario { // sorted as gotFindings sorts
	case "clean":
		return nil
	case "sct":
		return []string{"syscall-hook@" + a("new")}
	case "ftrace":
		w := []string{"ftrace-hook@" + a("func"), "ftrace-hook@" + a("target")}
		sort.Strings(w)
		return w
	case "hide":
		return []string{"exec-page@" + a("base"), "hidden-module@" + a("module")}
	case "code":
		return []string{"exec-page@" + a("code")}
	}
	t.Fatalf("scenario %s", scenario)
	return nil
}

func gotFindings(t *testing.T, out string) []string {
	t.Helper()
	var doc checkDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(doc.Problems) != 0 {
		t.Errorf("problems: %v", doc.Problems)
	}
	for _, c := range doc.Checks {
		if c.Skipped != "" {
			t.Errorf("check %s skipped: %s", c.Name, c.Skipped)
		}
	}
	var got []string
	for _, f := range doc.Findings {
		got = append(got, f.Kind+"@"+strconv.FormatUint(f.Address, 16))
	}
	sort.Strings(got)
	return got
}

// TestMemCheckRootkitDumps runs `mem check` on each rootkit scenario's dump:
// the findings are exactly the scenario's, at the addresses its console
// printed; exit 1 with findings, 0 on the clean boot; NDJSON has one line
// a finding and the table one row a finding.
func TestMemCheckRootkitDumps(t *testing.T) {
	for _, sc := range []string{"clean", "sct", "ftrace", "hide", "code"} {
		t.Run(sc, func(t *testing.T) {
			dump := rootkitFile(t, sc, "guest.elf")
			want := wantFindings(t, sc, rootkitTruth(t, rootkitFile(t, sc, "console.log")))
			out, errOut, code := vmscope(t, "mem", "check", "--format", "json", "--vmlinuz", guestFile(t, "vmlinuz"), dump)
			wantCode := 1
			if len(want) == 0 {
				wantCode = 0
			}
			if code != wantCode {
				t.Errorf("exit %d, want %d: %s", code, wantCode, errOut)
			}
			if got := gotFindings(t, out); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("findings %v, want %v", got, want)
			}
			nd, _, _ := vmscope(t, "mem", "check", "--format", "ndjson", dump)
			if n := strings.Count(nd, "\n"); n != len(want) {
				t.Errorf("ndjson: %d lines, want %d", n, len(want))
			}
			tab, errOut, _ := vmscope(t, "mem", "check", dump)
			if n := strings.Count(tab, "\n") - 1; n != len(want) {
				t.Errorf("table: %d rows, want %d:\n%s", n, len(want), tab)
			}
			if !strings.Contains(errOut, "check text: skipped: no kernel image given") {
				t.Errorf("without --vmlinuz, stderr does not say the text check was skipped:\n%s", errOut)
			}
		})
	}
}

// TestMemCheckLive boots each rootkit scenario (and the clean boot) and
// runs `mem check --guest --pause --vmlinuz` through the GDB stub: the
// findings are those the console names, as on the dumps; none and exit 0
// on the clean boot.
func TestMemCheckLive(t *testing.T) {
	if testing.Short() {
		fixture.Missing(t, "-short: the live tests boot a guest")
	}
	fixture.Tool(t, "qemu-system-x86_64")
	kernel := guestFile(t, "vmlinuz")
	initrd := rootkitFile(t, "initrd.gz")
	for _, sc := range []string{"clean", "sct", "ftrace", "hide", "code"} {
		t.Run(sc, func(t *testing.T) {
			spec, console := bootRootkit(t, kernel, initrd, sc)
			want := wantFindings(t, sc, rootkitTruth(t, console))
			out, errOut, code := vmscope(t, "mem", "check", "--format", "json", "--vmlinuz", kernel, "--guest", spec, "--pause")
			wantCode := 1
			if len(want) == 0 {
				wantCode = 0
			}
			if code != wantCode {
				t.Errorf("exit %d, want %d: %s", code, wantCode, errOut)
			}
			if got := gotFindings(t, out); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("findings %v, want %v", got, want)
			}
		})
	}
}

// bootRootkit boots the rootkit fixture's initramfs with scenario sc under
// TCG with a GDB stub and QMP, waits for READY, and quits QEMU when the
// test ends. It returns the --guest spec and the console log.
func bootRootkit(t *testing.T, kernel, initrd, sc string) (spec, console string) {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gdb := l.Addr().String()
	l.Close()
	qmpA, qmpB := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "ref.sock")
	console = filepath.Join(dir, "console.log")
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nographic", "-display", "none", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 vmscope.rootkit="+sc, "-serial", "file:"+console, "-monitor", "none",
		"-gdb", "tcp:"+gdb, "-qmp", "unix:"+qmpA+",server=on,wait=off",
		"-qmp", "unix:"+qmpB+",server=on,wait=off", "-net", "none")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if ref, err := qemu.DialQMP(ctx, qmpB); err == nil {
			ref.Quit(ctx)
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if b, _ := os.ReadFile(console); bytes.Contains(b, []byte("=== READY ===")) {
			break
		}
		select {
		case err := <-exited:
			t.Fatal(errors.Join(errors.New("QEMU exited before READY"), err))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("guest did not reach READY")
		}
	}
	return "gdb://" + gdb + ",qmp=unix:" + qmpA, console
}
