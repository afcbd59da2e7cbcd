package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestSIGINTExits130 runs the vmscope binary (vmscopeBin), starts a scan of a large
// image, interrupts it with SIGINT once the scan is under way (its first
// progress line) and checks that it stops with exit status 130, as a shell
// reports an interrupted command, not 2 (an error) or 0 (a clean scan).
func TestSIGINTExits130(t *testing.T) {
	if testing.Short() {
		fixture.Missing(t, "-short: builds the binary and scans a 480 MiB image")
	}
	img := fixture.Path(t, "gpt.img")
	bin := vmscopeBin(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		cmd := exec.Command(bin, "scan", "--hash", "--jobs", "1", "--progress", "always", "--format", "ndjson", img)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The progress line is redrawn with \r: wait for its first one.
		br := bufio.NewReader(stderr)
		var first string
		for err == nil && !strings.Contains(first, "files") {
			first, err = br.ReadString('\r')
		}
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%v: no progress line before the signal: %q %v", sig, first, err)
		}
		start := time.Now()
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		var rest bytes.Buffer
		io.Copy(&rest, br)
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitCanceled {
			t.Errorf("%v: exit %v, want status %d: %s", sig, err, exitCanceled, lastLine(rest.String()))
		}
		if !strings.Contains(rest.String(), "context canceled") {
			t.Errorf("%v: stderr does not say the scan was cancelled: %s", sig, lastLine(rest.String()))
		}
		t.Logf("%v: stopped %v after the signal", sig, time.Since(start).Round(time.Millisecond))
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexAny(s, "\r\n"); i >= 0 {
		return s[i+1:]
	}
	return s
}
