package guesttest

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestScenario checks that the fixture's console holds the scenario that
// init.sh promises, so that tests built on it check something real.
func TestScenario(t *testing.T) {
	for _, mode := range Modes {
		t.Run(mode, func(t *testing.T) {
			tr := Load(t, mode)
			if !tr.Ready {
				t.Fatal("no READY marker")
			}
			if !strings.HasPrefix(tr.Version, "Linux version ") {
				t.Errorf("version %q", tr.Version)
			}
			if got := strings.Contains(tr.Cmdline, "nokaslr"); got != (mode == NoKASLR) {
				t.Errorf("cmdline %q in mode %s", tr.Cmdline, mode)
			}
			wantArgs := map[string]string{
				"init": "/bin/sh /init", "sleep": "sleep 31337", "worker": "/bin/sh /tmp/worker.sh alpha beta",
				"pipecat": "cat", "nc": "nc -l -p 4444", "syslogd": "syslogd -n -O /tmp/messages",
				"tree": "/bin/sh /tmp/tree.sh 3", "threader": "/bin/threader 4",
			}
			for role, args := range wantArgs {
				pid, ok := tr.Scenario[role]
				if !ok {
					t.Errorf("scenario has no %s", role)
					continue
				}
				p, ok := tr.Process(pid)
				if role == "init" && mode == NoKASLR {
					args += " nokaslr" // the kernel hands parameters it does not know to init
				}
				if !ok || p.Args != args {
					t.Errorf("%s: pid %d row %+v, want args %q", role, pid, p, args)
				}
			}
			for _, p := range tr.PS {
				if p.Comm == "ps" {
					t.Errorf("ps row left in: %+v", p)
				}
			}
			fds := func(pid int) map[int]string {
				m := map[int]string{}
				for _, f := range tr.FDs[pid] {
					m[f.Num] = f.Target
				}
				return m
			}
			if w := fds(tr.Scenario["worker"]); w[3] != "/tmp/held.txt" || w[4] != "/tmp/worker.log" {
				t.Errorf("worker fds %v", w)
			}
			// the pipe: sleep 100001's stdout is cat's stdin
			cat := fds(tr.Scenario["pipecat"])
			var sleeper int
			for _, p := range tr.PS {
				if p.Args == "sleep 100001" {
					sleeper = p.PID
				}
			}
			if !strings.HasPrefix(cat[0], "pipe:[") || fds(sleeper)[1] != cat[0] {
				t.Errorf("pipe: cat fd 0 %q, sleep fd 1 %q", cat[0], fds(sleeper)[1])
			}
			if nc := fds(tr.Scenario["nc"]); !strings.HasPrefix(nc[3], "socket:[") {
				t.Errorf("nc fds %v", nc)
			}
			// the tree: sleep 42424 -> tree.sh 2 -> tree.sh 3 -> init
			var chain []string
			for _, p := range tr.PS {
				if p.Args == "sleep 42424" {
					for q, ok := p, true; ok && len(chain) < 10; q, ok = tr.Process(q.PPID) {
						chain = append(chain, q.Args)
					}
				}
			}
			if want := []string{"sleep 42424", "/bin/sh /tmp/tree.sh 2", "/bin/sh /tmp/tree.sh 3"}; !slices.Equal(chain[:min(3, len(chain))], want) || len(chain) != 4 {
				t.Errorf("tree chain %q, want %q", chain, want)
			}
			var comms []string
			for _, task := range tr.Tasks[tr.Scenario["threader"]] {
				comms = append(comms, task.Comm)
			}
			for _, c := range []string{"threader", "worker-0", "worker-1", "worker-2", "worker-3"} {
				if !slices.Contains(comms, c) {
					t.Errorf("threader tasks %q lack %s", comms, c)
				}
			}
			var mods []string
			for _, m := range tr.Modules {
				mods = append(mods, m.Name)
				if m.Addr == 0 || m.State != "Live" {
					t.Errorf("module %+v", m)
				}
			}
			if !slices.Contains(mods, "dummy") || !slices.Contains(mods, "crc32_generic") {
				t.Errorf("modules %q", mods)
			}
			var targets []string
			for _, m := range tr.Mounts {
				targets = append(targets, m.Target)
			}
			if !slices.Equal(targets, []string{"/", "/proc", "/sys", "/dev", "/tmp", "/dev/pts"}) {
				t.Errorf("mounts %q", targets)
			}
			text, ok := tr.Symbol("_text")
			if !ok || len(tr.Kallsyms) < 10000 {
				t.Fatalf("kallsyms: %d symbols, _text %v", len(tr.Kallsyms), ok)
			}
			if (text == 0xffffffff81000000) != (mode == NoKASLR) {
				t.Errorf("_text %#x in mode %s", text, mode)
			}
			if _, ok := tr.Symbol("init_task"); !ok {
				t.Error("no init_task")
			}
		})
	}
}

func TestParseConsoleErrors(t *testing.T) {
	if _, err := ParseConsole(strings.NewReader("=== BEGIN ps ===\nPID PPID COMMAND COMMAND\n")); err == nil {
		t.Error("unterminated section accepted")
	}
	tr, err := ParseConsole(strings.NewReader("noise\r\n=== BEGIN ps ===\r\nPID   PPID  COMMAND          COMMAND\r\n    1     0 init             {init} /bin/sh /init\r\n   70     1 ps               ps -o pid,ppid,comm,args\r\n=== END ps ===\r\n=== READY ===\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.PS) != 1 || tr.PS[0] != (Process{PID: 1, PPID: 0, Comm: "init", Args: "/bin/sh /init"}) || !tr.Ready {
		t.Errorf("%+v", tr.PS)
	}
}

// TestLive boots the fixture guest and checks its QMP socket and GDB stub.
func TestLive(t *testing.T) {
	if testing.Short() {
		fixture.Missing(t, "-short: TestLive boots a guest (about 20 s)")
	}
	g := Live(t, KASLR)
	ctx := context.Background()
	st, err := g.QMP(ctx, "query-status", nil)
	if err != nil || !strings.Contains(string(st), `"running"`) {
		t.Fatalf("query-status: %s %v", st, err)
	}
	regs, err := g.HMP(ctx, "info registers")
	if err != nil || !strings.Contains(regs, "CR3=") {
		t.Fatalf("info registers: %q %v", regs, err)
	}
	c, err := net.DialTimeout("tcp", g.GDBAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("$?#3f")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	// "+" acknowledges, "$T.." is the stop reply (the stub stops the vCPU on attach)
	if err != nil || !(bytes.HasPrefix(buf[:n], []byte("+")) || bytes.HasPrefix(buf[:n], []byte("$T"))) {
		t.Fatalf("GDB stub answered %q %v", buf[:n], err)
	}
}
