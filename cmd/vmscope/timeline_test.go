package main

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestTimelineCommand drives timeline through cobra on the fixture whose
// /etc/new-file.txt has nanosecond times set by debugfs sif: the NDJSON
// events keep the nanoseconds debugfs stat shows; the body file holds the
// whole seconds; csv starts with mactime's header; a range keeps only what
// falls in it; a bad zone or time is a usage error (exit 2).
func TestTimelineCommand(t *testing.T) {
	img := fixture.Path(t, "ext4-changed.img")
	st, err := exec.Command(fixture.Tool(t, "debugfs"), "-R", "stat /etc/new-file.txt", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*mtime: 0x([0-9a-f]{8}):([0-9a-f]{8})`).FindStringSubmatch(string(st))
	if m == nil {
		t.Fatalf("debugfs stat: no mtime:\n%s", st)
	}
	lo, _ := strconv.ParseUint(m[1], 16, 32)
	ex, _ := strconv.ParseUint(m[2], 16, 32)
	want := time.Unix(int64(int32(lo))+int64(ex&3)<<32, int64(ex>>2)).UTC()
	if want.Nanosecond() == 0 {
		t.Fatalf("fixture mtime %v has no nanoseconds", want)
	}

	out, _, code := vmscope(t, "timeline", img, "--format", "ndjson")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	found := false
	var prev time.Time
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct {
			Time time.Time `json:"time"`
			MACB string    `json:"macb"`
			Path string    `json:"path"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		if ev.Time.Before(prev) {
			t.Fatalf("not sorted at %s", l)
		}
		prev = ev.Time
		if ev.Path == "/etc/new-file.txt" && ev.MACB[0] == 'm' {
			found = true
			if !ev.Time.Equal(want) {
				t.Errorf("mtime %v, debugfs %v", ev.Time, want)
			}
		}
	}
	if !found {
		t.Fatal("no mtime event of /etc/new-file.txt")
	}

	body, _, code := vmscope(t, "timeline", img, "/etc")
	if code != 0 || !strings.Contains(body, "0|/etc/new-file.txt|") {
		t.Fatalf("exit %d: body of /etc lacks new-file.txt:\n%s", code, body)
	}
	for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
		f := strings.Split(l, "|")
		if len(f) != 11 || !strings.HasPrefix(f[1], "/etc/") {
			t.Fatalf("body line %q", l)
		}
		if f[1] == "/etc/new-file.txt" && f[8] != strconv.FormatInt(want.Unix(), 10) {
			t.Errorf("body mtime %s, want %d", f[8], want.Unix())
		}
	}

	csv, _, code := vmscope(t, "timeline", img, "--format", "csv", "--since", want.Format(time.RFC3339), "--until", want.Add(time.Second).Format(time.RFC3339))
	if code != 0 || !strings.HasPrefix(csv, "Date,Size,Type,Mode,UID,GID,Meta,File Name\n") {
		t.Fatalf("exit %d: %s", code, csv)
	}
	lines := strings.Split(strings.TrimSpace(csv), "\n")[1:]
	if len(lines) == 0 {
		t.Fatal("range kept nothing")
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, want.Format("Mon Jan 02 2006 15:04:05")+",") {
			t.Errorf("outside the range: %s", l)
		}
	}
	for _, args := range [][]string{{"--tz", "Nowhere/Land"}, {"--since", "yesterday"}, {"--format", "xml"}} {
		if _, _, code := vmscope(t, append([]string{"timeline", img}, args...)...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// TestTimelineJournalFlag: --journal adds the names the kernel wiped on
// delete, from the journal's older copy of /docs (timeline's
// TestJournalHistory holds their metadata), marked with the transaction;
// without it they are absent.
func TestTimelineJournalFlag(t *testing.T) {
	img := irFixture(t, "del-kernel.img")
	with, _, code := vmscope(t, "timeline", "--journal", img)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	without, _, _ := vmscope(t, "timeline", img)
	re := regexp.MustCompile(`(?m)^0\|/docs/(report|draft)\.txt \(journal seq \d+\)\|`)
	if n := len(re.FindAllString(with, -1)); n < 2 {
		t.Errorf("--journal: %d journal lines of report.txt and draft.txt:\n%s", n, with)
	}
	if strings.Contains(without, "(journal") || strings.Contains(without, "/docs/report.txt|") {
		t.Error("journal lines without --journal")
	}
}
