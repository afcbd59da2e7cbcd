package jbd2

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/internal/fixture"
)

// TestHistoryMatchesLogdump: on the image a real kernel changed in several
// synced transactions (testdata/ir/build.sh), the copies ReadHistory finds
// are exactly the tags `debugfs logdump -O -a` prints for the committed
// transactions of the whole journal (sequence, filesystem block, journal
// block), and each copy reads back as the journal block it names.
func TestHistoryMatchesLogdump(t *testing.T) {
	img := filepath.Join(fixture.Root(), "testdata", "out-ir", "del-kernel.img")
	if _, err := os.Stat(img); err != nil {
		fixture.Missing(t, "%s (bash testdata/ir/build.sh)", img)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	fsys, err := ext4.Open(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHistory(context.Background(), fsys, f)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, c := range h.Copies {
		got[fmt.Sprintf("%d:%d:%d", c.Seq, c.FSBlock, c.JBlock)] = true
		if _, err := h.Read(c); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(fixture.Tool(t, "debugfs"), "-R", "logdump -O -a", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	found := regexp.MustCompile(`^Found expected sequence (\d+), type (\d+)`)
	tagRe := regexp.MustCompile(`^  FS block (\d+) logged at journal block (\d+)`)
	want := map[string]bool{}
	committed := map[string]bool{}
	var seq, typ string
	var pend []string
	for _, l := range strings.Split(string(out), "\n") {
		if m := found.FindStringSubmatch(l); m != nil {
			seq, typ = m[1], m[2]
			if typ == "2" {
				committed[seq] = true
			}
			continue
		}
		if m := tagRe.FindStringSubmatch(l); m != nil && typ == "1" {
			pend = append(pend, seq+":"+m[1]+":"+m[2])
		}
	}
	for _, p := range pend {
		if committed[strings.SplitN(p, ":", 2)[0]] {
			want[p] = true
		}
	}
	if len(want) < 10 {
		t.Fatalf("logdump lists %d copies: the fixture's journal holds too little", len(want))
	}
	for k := range got {
		if !want[k] {
			t.Errorf("ours only: %s", k)
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("logdump only: %s", k)
		}
	}
}
