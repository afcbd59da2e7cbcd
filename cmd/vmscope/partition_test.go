package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestLogicalPartitions: on an MBR disk whose extended partition holds
// three logical ones (written by sfdisk), ls, cat and scan reach the file
// planted in the last one, p7, and every logical filesystem is listed.
func TestLogicalPartitions(t *testing.T) {
	img := fixture.Path(t, "mbr-logical.img")
	out, stderr, code := vmscope(t, "ls", "-r", img, "p7:/etc")
	if code != 0 || !strings.Contains(out, "/etc/cron.d/job\n") {
		t.Errorf("ls -r p7:/etc: exit %d %s\n%s", code, stderr, out)
	}
	out, _, code = vmscope(t, "cat", img, "p7:/etc/cron.d/job")
	if code != 0 || !strings.Contains(out, "VMSCOPE_MARKER_P2") {
		t.Errorf("cat p7:/etc/cron.d/job: exit %d %q", code, out)
	}
	out, _, code = vmscope(t, "ls", img)
	for _, p := range []string{"p1", "p5", "p6", "p7"} {
		if !strings.Contains(out, p+":/etc\n") {
			t.Errorf("ls: no %s:/etc (exit %d):\n%s", p, code, out)
		}
		which, _, _ := vmscope(t, "cat", img, p+":/etc/which")
		if which != "partition "+strings.TrimPrefix(p, "p")+"\n" {
			t.Errorf("%s:/etc/which = %q", p, which)
		}
	}

	rules := filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar")
	out, stderr, code = vmscope(t, "scan", "--progress", "never", "--rules", rules, "--format", "json", img)
	if code != 1 {
		t.Fatalf("scan: exit %d, want 1 (a finding): %s", code, stderr)
	}
	var rep struct {
		Findings []struct {
			Partition string `json:"partition"`
			Path      string `json:"path"`
			Rule      string `json:"rule"`
		} `json:"findings"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range rep.Findings {
		got = append(got, m.Partition+":"+m.Path+" "+m.Rule)
	}
	if strings.Join(got, ",") != "p7:/etc/cron.d/job Marker_P2" {
		t.Errorf("scan findings %v, want only p7:/etc/cron.d/job Marker_P2\n%s", got, out)
	}
}
