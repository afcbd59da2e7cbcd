package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// ntfsImage returns a file of testdata/ntfs/build.sh's output, or skips
// (fails under CI) when it has not been built.
func ntfsImage(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-ntfs", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/ntfs/build.sh)", p)
	}
	return p
}

// TestNTFSCommands: info, ls, cat, scan and dirty on the NTFS fixture.
func TestNTFSCommands(t *testing.T) {
	img := ntfsImage(t, "ntfs.qcow2")

	out, _, code := vmscope(t, "info", img)
	if code != 0 || !strings.Contains(out, "ntfs  vmscope-ntfs") {
		t.Fatalf("info: exit %d\n%s", code, out)
	}
	out, _, code = vmscope(t, "info", ntfsImage(t, "ntfs-dirty.img"))
	if code != 0 || !strings.Contains(out, "dirty") {
		t.Errorf("info of the dirty volume: exit %d, no dirty\n%s", code, out)
	}

	// ls -l: streams as path:stream after their file; both times.
	out, errOut, code := vmscope(t, "ls", "-l", img, "/docs")
	if code != 0 {
		t.Fatalf("ls -l: exit %d: %s", code, errOut)
	}
	var blob, zone int = -1, -1
	for i, l := range strings.Split(out, "\n") {
		if strings.HasSuffix(l, " /docs/blob1.bin") {
			blob = i
		}
		if strings.HasSuffix(l, " /docs/blob1.bin:Zone.Identifier") {
			zone = i
		}
	}
	if blob < 0 || zone != blob+1 {
		t.Errorf("ls -l /docs: blob1.bin at line %d, its stream at %d\n%s", blob, zone, out)
	}
	out, _, code = vmscope(t, "ls", "-l", img, "/links/stomped.txt")
	if f := strings.Fields(out); code != 0 || len(f) < 11 || f[6] != "2001-02-03" || f[8] == "2001-02-03" {
		t.Errorf("ls -l of the timestomped file: want the $SI date 2001-02-03 then the real $FILE_NAME one: %q", out)
	}
	out, _, code = vmscope(t, "ls", "--format", "json", img, "/links/stomped.txt")
	var js []struct {
		Mtime   string `json:"mtime"`
		FNTimes struct {
			Mtime string `json:"mtime"`
		} `json:"fn_times"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || code != 0 || len(js) != 1 || !strings.HasPrefix(js[0].Mtime, "2001-02-03") || js[0].FNTimes.Mtime == "" || strings.HasPrefix(js[0].FNTimes.Mtime, "2001") {
		t.Errorf("ls --format json: %v %q", err, out)
	}

	// cat of a stream equals ntfscat's.
	want, err := exec.Command(fixture.Tool(t, "ntfscat"), "-f", ntfsImage(t, "ntfs.img"), "/hello.txt", "-a", "128", "-n", "big").Output()
	if err != nil {
		t.Fatal(err)
	}
	out, _, code = vmscope(t, "cat", img, "/hello.txt:big")
	if code != 0 || out != string(want) {
		t.Errorf("cat /hello.txt:big: exit %d, %d bytes, ntfscat %d", code, len(out), len(want))
	}

	// scan reads the streams: the marker is only in an ADS.
	rules := filepath.Join(t.TempDir(), "ads.yar")
	os.WriteFile(rules, []byte(`rule ntfs_ads { strings: $a = "VMSCOPE_NTFS_ADS" condition: $a }`+"\n"), 0o644)
	out, errOut, code = vmscope(t, "scan", "--rules", rules, "--format", "json", img)
	if code != 1 || !strings.Contains(out, `"/docs/numbers.txt:hidden"`) {
		t.Errorf("scan: exit %d, want the finding in /docs/numbers.txt:hidden\n%s\n%s", code, out, errOut)
	}

	// scan --dirty: the changed files' streams are scanned too (the
	// overlay changed only the stream's content).
	os.WriteFile(rules, []byte(`rule ntfs_changed { strings: $a = "changed stream" condition: $a }`+"\n"), 0o644)
	out, errOut, code = vmscope(t, "scan", "--rules", rules, "--format", "json", "--dirty", "base:"+img, ntfsImage(t, "ntfs-overlay.qcow2"))
	if code != 1 || !strings.Contains(out, `"/docs/numbers.txt:hidden"`) || !strings.Contains(errOut, "6 to scan") {
		t.Errorf("scan --dirty: exit %d, want the finding in /docs/numbers.txt:hidden and 6 files due\n%s\n%s", code, out, errOut)
	}

	// dirty on the overlay: exactly the files changed through ntfs-3g
	// (a changed stream makes its file changed), none missed.
	out, errOut, code = vmscope(t, "dirty", "--format", "json", ntfsImage(t, "ntfs-overlay.qcow2"))
	if code != 0 {
		t.Fatalf("dirty: exit %d: %s", code, errOut)
	}
	var res struct {
		Changes []struct {
			Type  string   `json:"type"`
			Paths []string `json:"paths"`
		} `json:"changes"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("dirty json: %v\n%s", err, out)
	}
	var got []string
	for _, c := range res.Changes {
		if c.Type == "file" {
			got = append(got, c.Paths...)
		}
	}
	b, err := os.ReadFile(ntfsImage(t, "changed.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var wantCh []string
	for _, l := range strings.Fields(string(b)) {
		if i := strings.LastIndexByte(l, ':'); i > 0 {
			l = l[:i]
		}
		wantCh = append(wantCh, l)
	}
	sort.Strings(got)
	sort.Strings(wantCh)
	if strings.Join(got, "\n") != strings.Join(wantCh, "\n") {
		t.Errorf("dirty files:\n%s\nwant (changed.txt):\n%s\n%s", strings.Join(got, "\n"), strings.Join(wantCh, "\n"), out)
	}
}
