package guesttest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// Shared is a fixture guest booted for live tests that attach vmscope to it
// and check it through a channel of their own: QEMU (TCG, one vCPU, KASLR
// on) with a GDB stub and two QMP sockets, because QEMU serves one client
// per QMP socket. Spec is what vmscope attaches to; RefQMP is the test's.
type Shared struct {
	Spec    string // gdb://HOST:PORT,qmp=unix:PATH
	GDBAddr string
	QMPPath string // vmscope's QMP socket
	RefQMP  string // the test's QMP socket
	Console string

	cmd    *exec.Cmd
	exited chan struct{}
}

// BootShared boots the fixture's kernel and initrd as a Shared guest and
// waits for the READY marker; QEMU is killed when the test ends. It skips
// (fails under CI=true) when the fixture or QEMU is missing.
func BootShared(t testing.TB) *Shared {
	t.Helper()
	if testing.Short() {
		fixture.Missing(t, "-short: the live tests boot a guest")
	}
	fixture.Tool(t, "qemu-system-x86_64")
	kernel, initrd := Path(t, "vmlinuz"), Path(t, "initrd.gz")
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gdb := l.Addr().String()
	l.Close()
	// unix socket paths are limited to 108 bytes: keep them short
	sock, err := os.MkdirTemp("", "vmscope-shared")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	s := &Shared{
		GDBAddr: gdb, QMPPath: filepath.Join(sock, "qmp.sock"), RefQMP: filepath.Join(sock, "ref.sock"),
		Console: filepath.Join(dir, "console.log"), exited: make(chan struct{}),
	}
	s.Spec = "gdb://" + gdb + ",qmp=unix:" + s.QMPPath
	s.cmd = exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nographic", "-display", "none", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1", "-serial", "file:"+s.Console, "-monitor", "none",
		"-gdb", "tcp:"+gdb, "-qmp", "unix:"+s.QMPPath+",server=on,wait=off",
		"-qmp", "unix:"+s.RefQMP+",server=on,wait=off", "-net", "none")
	var stderr bytes.Buffer
	s.cmd.Stderr = &stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.exited
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for {
		if b, _ := os.ReadFile(s.Console); bytes.Contains(b, []byte(ReadyMarker)) {
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("qemu exited before READY: %s", strings.TrimSpace(stderr.String()))
		case <-ctx.Done():
			t.Fatal(fmt.Errorf("no READY in %s: %w", s.Console, ctx.Err()))
		case <-time.After(200 * time.Millisecond):
		}
	}
}
