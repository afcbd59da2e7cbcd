package guesttest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ReadyMarker is the line the fixture's /init prints once its ground truth
// is out and the scenario is in its steady state.
const ReadyMarker = "=== READY ==="

// Config says how to boot the fixture guest.
type Config struct {
	Kernel string // vmlinuz
	Initrd string // initrd.gz
	Append string // extra kernel command line, e.g. "nokaslr"
	MemMiB int    // guest memory; 512 when zero
	Dir    string // where the console log and the QMP socket go
	// CPU is QEMU's -cpu model ("max" gives LA57, i.e. 5-level paging);
	// QEMU's default when empty.
	CPU string
	// Extra QEMU arguments, e.g. a -drive or "-device vmcoreinfo".
	Extra []string
}

// Guest is a running fixture guest: QEMU under TCG with a QMP socket and a
// GDB stub on loopback.
type Guest struct {
	Console string // serial console log
	QMPPath string // QMP unix socket
	GDBAddr string // host:port of the GDB stub

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	stderr  bytes.Buffer

	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

// Boot starts QEMU and waits (until ctx ends) for the READY marker on the
// serial console. The caller must Quit (or Kill) the guest.
func Boot(ctx context.Context, cfg Config) (*Guest, error) {
	if cfg.MemMiB == 0 {
		cfg.MemMiB = 512
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	g := &Guest{
		Console: filepath.Join(cfg.Dir, "console.log"),
		// unix socket paths are limited to 108 bytes: keep it in /tmp.
		QMPPath: filepath.Join(os.TempDir(), fmt.Sprintf("vmscope-qmp-%d-%d.sock", os.Getpid(), port)),
		GDBAddr: fmt.Sprintf("127.0.0.1:%d", port),
		exited:  make(chan struct{}),
	}
	os.Remove(g.Console)
	os.Remove(g.QMPPath)
	args := []string{
		"-accel", "tcg", "-m", fmt.Sprint(cfg.MemMiB), "-smp", "1",
		"-nographic", "-display", "none", "-no-reboot",
		"-kernel", cfg.Kernel, "-initrd", cfg.Initrd,
		"-append", strings.TrimSpace("console=ttyS0 quiet panic=-1 " + cfg.Append),
		"-serial", "file:" + g.Console,
		"-monitor", "none",
		"-gdb", "tcp:" + g.GDBAddr,
		"-qmp", "unix:" + g.QMPPath + ",server=on,wait=off",
		"-net", "none",
	}
	if cfg.CPU != "" {
		args = append(args, "-cpu", cfg.CPU)
	}
	args = append(args, cfg.Extra...)
	g.cmd = exec.Command("qemu-system-x86_64", args...)
	g.cmd.Stderr = &g.stderr
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("guesttest: start qemu: %w", err)
	}
	go func() { g.waitErr = g.cmd.Wait(); close(g.exited) }()
	if err := g.waitReady(ctx); err != nil {
		g.Kill()
		return nil, err
	}
	if err := g.connect(ctx); err != nil {
		g.Kill()
		return nil, err
	}
	return g, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (g *Guest) waitReady(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("guesttest: waiting for %q in %s: %w", ReadyMarker, g.Console, ctx.Err())
		case <-g.exited:
			return fmt.Errorf("guesttest: qemu exited before READY: %v: %s", g.waitErr, g.stderr.String())
		case <-tick.C:
		}
		b, err := os.ReadFile(g.Console)
		if err == nil && bytes.Contains(b, []byte(ReadyMarker)) {
			return nil
		}
	}
}

func (g *Guest) connect(ctx context.Context) error {
	var d net.Dialer
	var conn net.Conn
	var err error
	for i := 0; i < 100; i++ {
		if conn, err = d.DialContext(ctx, "unix", g.QMPPath); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("guesttest: QMP %s: %w", g.QMPPath, err)
	}
	g.conn = conn
	g.rd = bufio.NewReaderSize(conn, 1<<20)
	if _, err := g.rd.ReadBytes('\n'); err != nil { // greeting
		return fmt.Errorf("guesttest: QMP greeting: %w", err)
	}
	_, err = g.QMP(ctx, "qmp_capabilities", nil)
	return err
}

// QMP runs one QMP command and returns its "return" value.
func (g *Guest) QMP(ctx context.Context, command string, args any) (json.RawMessage, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if dl, ok := ctx.Deadline(); ok {
		g.conn.SetDeadline(dl)
	} else {
		g.conn.SetDeadline(time.Time{})
	}
	if _, err := g.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("guesttest: QMP %s: %w", command, err)
	}
	for {
		line, err := g.rd.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("guesttest: QMP %s: %w", command, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("guesttest: QMP %s: %w", command, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("guesttest: QMP %s: %s: %s", command, resp.Error.Class, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
}

// HMP runs one human-monitor command through QMP and returns its output.
func (g *Guest) HMP(ctx context.Context, line string) (string, error) {
	r, err := g.QMP(ctx, "human-monitor-command", map[string]any{"command-line": line})
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", err
	}
	return s, nil
}

// Dump writes guest memory to path with dump-guest-memory (paging=false)
// in format "elf", "kdump-zlib", "kdump-lzo", "kdump-snappy" or "win-dmp".
func (g *Guest) Dump(ctx context.Context, path, format string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	os.Remove(abs)
	_, err = g.QMP(ctx, "dump-guest-memory", map[string]any{
		"paging": false, "protocol": "file:" + abs, "format": format,
	})
	return err
}

// Quit stops QEMU with QMP quit and waits for it to exit.
func (g *Guest) Quit() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if g.conn != nil {
		g.QMP(ctx, "quit", nil) // the connection may close before the answer
	}
	select {
	case <-g.exited:
	case <-ctx.Done():
		g.Kill()
		return errors.New("guesttest: qemu did not quit")
	}
	g.cleanup()
	return nil
}

// Kill ends QEMU at once.
func (g *Guest) Kill() {
	if g.cmd != nil && g.cmd.Process != nil {
		g.cmd.Process.Kill()
		<-g.exited
	}
	g.cleanup()
}

func (g *Guest) cleanup() {
	if g.conn != nil {
		g.conn.Close()
	}
	os.Remove(g.QMPPath)
}
