package timeline

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJournalHistory: on the image a real kernel changed (testdata/ir/
// build.sh: report.txt appended to, 27 bytes, and touched to 2020-05-06
// 07:08:09 UTC, draft.txt made, synced; then both deleted, the kernel
// wiping their records and truncating their inodes), WalkJournal gives the
// names and the older inode the journal kept: /docs/report.txt, inode as
// ls --deleted finds it freed now, with the kept size + 27 and that mtime,
// and /docs/draft.txt; every journal record is marked and differs from the
// current state; the debugfs image (debugfs writes no journal) gives none.
func TestJournalHistory(t *testing.T) {
	img := imagePath(t, "out-ir/del-kernel.img")
	kept, err := os.ReadFile(filepath.Join(filepath.Dir(img), "kept", "docs", "report.txt"))
	if err != nil {
		t.Fatal(err)
	}
	v := openVolume(t, img)
	live := records(t, v)
	recs, probs, err := WalkJournal(context.Background(), v, "", live)
	if err != nil || len(probs) > 0 {
		t.Fatalf("%v %v", err, probs)
	}
	// What a record shows, to the nanosecond, without its marks.
	key := func(r *Record) string {
		return fmt.Sprintf("%s|%d|%s|%d|%d|%d|%d|%d|%d", r.Name, r.Ino, r.ModeString(), r.Uid, r.Gid, r.Size,
			r.Atime.UnixNano(), r.Mtime.UnixNano(), r.Ctime.UnixNano())
	}
	current := map[string]bool{}
	for i := range live {
		current[key(&live[i])] = true
	}
	var report, draft *Record
	for i := range recs[len(live):] {
		r := &recs[len(live)+i]
		if !strings.HasPrefix(r.Source, "journal seq ") {
			t.Errorf("unmarked: %s", r.AppendBody(nil))
		}
		if current[key(r)] {
			t.Errorf("same as now: %s", r.AppendBody(nil))
		}
		switch r.Name {
		case "/docs/report.txt":
			report = r
		case "/docs/draft.txt":
			draft = r
		}
	}
	if report == nil || draft == nil {
		t.Fatalf("journal names: report %v draft %v", report, draft)
	}
	if want := int64(len(kept) + 27); report.Size != want || !report.Mtime.Equal(time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)) {
		t.Errorf("report.txt in the journal: size %d mtime %v, want %d and 2020-05-06 07:08:09", report.Size, report.Mtime.UTC(), want)
	}
	s, err := v.ScanDeleted(context.Background(), ".")
	if err != nil {
		t.Fatal(err)
	}
	freed := false
	for _, d := range s.Deleted {
		if d.Ino == report.Ino && d.Orphan && d.Size == 0 {
			freed = true
		}
	}
	if !freed {
		t.Errorf("inode %d of the journal's report.txt is not a freed, truncated orphan now", report.Ino)
	}

	dv := openVolume(t, imagePath(t, "out-ir/del-debugfs.img"))
	dl := records(t, dv)
	drecs, _, err := WalkJournal(context.Background(), dv, "", dl)
	if err != nil || len(drecs) != len(dl) {
		t.Errorf("debugfs image: %d journal records, %v", len(drecs)-len(dl), err)
	}
}
