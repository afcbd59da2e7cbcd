package libvirt

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi/qemu"
)

// attachProcess is the process-memory path: qemu.OpenEndpoint on the
// domain's Endpoint from Dial, memory from the domain's QEMU process
// (ep.PID), registers and the pause through the monitor pass-through. No
// GDB stub is opened: the QEMU process has no listening TCP socket after
// the attach and before the detach (the check first sees a stub opened on
// demand and closed).
func attachProcess(t *testing.T, ctx context.Context, ep qemu.Endpoint) attached {
	if ep.PID == 0 {
		t.Fatalf("endpoint without a pid: %+v", ep)
	}
	// the check sees a stub: one opened on demand and closed again
	addr, closeStub, err := ep.OpenGDB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := listeningTCP(ep.PID)
	if err != nil || len(l) != 1 {
		t.Errorf("with a stub on %s, QEMU listens on TCP %v (%v): want one", addr, l, err)
	}
	if err := closeStub(ctx); err != nil {
		t.Fatal(err)
	}
	g, err := qemu.OpenEndpoint(ctx, ep, qemu.WithJournal(filepath.Join(t.TempDir(), "journal")))
	if err != nil {
		t.Fatal(err)
	}
	noStub(t, ep.PID)
	return attached{live: g, close: func(ctx context.Context) error {
		noStub(t, ep.PID)
		return g.Close(ctx)
	}}
}

// noStub fails the test when process pid listens on a TCP socket (a GDB
// stub is QEMU's only TCP listener here).
func noStub(t testing.TB, pid int) {
	t.Helper()
	l, err := listeningTCP(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) > 0 {
		t.Errorf("QEMU (pid %d) listens on TCP %v: a GDB stub is open on the process path", pid, l)
	}
}

// listeningTCP lists the local addresses (hex, as /proc/net/tcp{,6} has
// them) of the TCP sockets process pid listens on: its socket fds'
// inodes matched with the LISTEN rows of its network namespace.
func listeningTCP(pid int) ([]string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var out []string
	for _, f := range []string{"tcp", "tcp6"} {
		fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			c := strings.Fields(sc.Text())
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if len(c) > 9 && c[3] == "0A" && inodes[c[9]] {
				out = append(out, c[1])
			}
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
