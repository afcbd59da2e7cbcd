package state

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vmscope/vmscope/dirty"
)

func snap(id, rules string) *dirty.Snapshot {
	return &dirty.Snapshot{Identity: id, RulesDigest: rules, Cursor: dirty.Cursor{Source: "hash"}, Indexes: map[string]*dirty.Index{}}
}

// TestOpenWaitsForHolder: a second open of a state file another open holds
// waits for it (bbolt's file lock) and then reads what the first saved;
// when the holder keeps it past the timeout, the second refuses with
// ErrBusy. Never both at once: no lost update.
func TestOpenWaitsForHolder(t *testing.T) {
	for _, start := range []string{"database", "empty", "missing"} {
		t.Run(start, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "state.db")
			switch start {
			case "database":
				db, err := Open(p)
				if err != nil {
					t.Fatal(err)
				}
				if err := db.Save(snap("img", "r0")); err != nil {
					t.Fatal(err)
				}
				db.Close()
			case "empty":
				if err := os.WriteFile(p, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			a, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			if start != "missing" {
				if _, err := Open(p, WithTimeout(100*time.Millisecond)); !errors.Is(err, ErrBusy) {
					t.Fatalf("second open while held: %v, want ErrBusy", err)
				}
			}
			type opened struct {
				db  *DB
				err error
			}
			second := make(chan opened, 1)
			go func() {
				b, err := Open(p, WithTimeout(time.Minute))
				second <- opened{b, err}
			}()
			if start != "missing" {
				select {
				case o := <-second:
					t.Fatalf("second open did not wait for the holder: %v", o.err)
				case <-time.After(300 * time.Millisecond):
				}
			}
			if err := a.Save(snap("img", "r1")); err != nil {
				t.Fatal(err)
			}
			a.Close()
			o := <-second
			if o.err != nil {
				t.Fatal(o.err)
			}
			defer o.db.Close()
			if start == "missing" {
				// Nothing to lock when both began: the second finds the
				// file the first created only when it saves, and refuses.
				if err := o.db.Save(snap("img", "r2")); !errors.Is(err, ErrRaced) {
					t.Fatalf("save of a poll that began on a missing file created meanwhile: %v, want ErrRaced", err)
				}
				o.db.Close()
				if o.db, err = Open(p); err != nil {
					t.Fatal(err)
				}
			}
			s, err := o.db.Load("img")
			if err != nil || s == nil || s.RulesDigest != "r1" {
				t.Fatalf("the second open reads %+v, %v: want the first's save", s, err)
			}
			if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
				t.Errorf("files left beside the state: %v", ents)
			}
		})
	}
}

// TestUnscannedThroughState: the files of a poll that gave no verdict (a
// listing) stay due, through the state file, until a poll gives them one;
// the cursor moves on meanwhile (the second poll finds no change).
func TestUnscannedThroughState(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	im, d := open(t, "overlay-raw.qcow2")
	poll := func(verdicts bool) *dirty.Selection {
		t.Helper()
		sel, err := dirty.Select(ctx, im, d, dirty.Auto(im), db, "r1")
		if err != nil {
			t.Fatal(err)
		}
		if verdicts {
			for _, c := range sel.Due() {
				sel.SetVerdict(c, "clean")
			}
		}
		if err := sel.Commit(); err != nil {
			t.Fatal(err)
		}
		return sel
	}
	first := poll(false)
	want := map[string]bool{}
	for _, c := range first.Due() {
		want[c.Path] = true
	}
	if len(want) < 100 {
		t.Fatalf("first poll: %d due", len(want))
	}
	for i, verdicts := range []bool{false, true} {
		sel := poll(verdicts)
		got := map[string]bool{}
		for _, c := range sel.Due() {
			got[c.Path] = true
			if !slices.Equal(c.Reasons, []dirty.Kind{dirty.KindUnscanned}) {
				t.Errorf("poll %d: %s due for %v", i+2, c.Path, c.Reasons)
			}
		}
		if len(sel.Changes) != 0 {
			t.Errorf("poll %d: %d changes, nothing written since the first", i+2, len(sel.Changes))
		}
		if !maps.Equal(got, want) {
			t.Errorf("poll %d: %d due, want the %d the first poll left unscanned", i+2, len(got), len(want))
		}
	}
	if n := len(poll(true).Due()); n != 0 {
		t.Errorf("poll after one that scanned every due file: %d due", n)
	}
}
