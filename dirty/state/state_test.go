package state

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/qcow"
)

func open(t *testing.T, name string) (*qcow.Image, *fsparse.Disk) {
	im, err := qcow.Open(fixture.Path(t, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	d, err := fsparse.Open(im, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	return im, d
}

func TestPollsThroughState(t *testing.T) {
	ctx := context.Background()
	db, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	im, d := open(t, "overlay-raw.qcow2")
	poll := func(rules string) *dirty.Selection {
		t.Helper()
		sel, err := dirty.Select(ctx, im, d, "auto", db, rules)
		if err != nil {
			t.Fatal(err)
		}
		if err := sel.Commit(); err != nil {
			t.Fatal(err)
		}
		return sel
	}
	first := poll("r1")
	if first.Source != "cow" || len(first.Due()) < 100 {
		t.Fatalf("first poll: source %s, %d due", first.Source, len(first.Due()))
	}
	second := poll("r1")
	t.Logf("second poll: %d changes, %d due", len(second.Changes), len(second.Due()))
	if len(second.Due()) >= len(first.Due())/4 {
		t.Errorf("second poll: %d due of %d", len(second.Due()), len(first.Due()))
	}
	for _, c := range second.Changes {
		if len(c.Reasons) == 0 {
			t.Errorf("no reason: %+v", c)
		}
	}
	third := poll("r1")
	if len(third.Changes) != 0 {
		t.Errorf("third poll, nothing written since: %d changes: %+v", len(third.Changes), third.Changes)
	}
	fourth := poll("r2")
	if len(fourth.Due()) != len(first.Due()) {
		t.Errorf("rules changed: %d due, want every file (%d)", len(fourth.Due()), len(first.Due()))
	}

	other, od := open(t, "ext4-changed.img")
	if _, err := dirty.Select(ctx, other, od, "auto", db, "r2"); !errors.Is(err, dirty.ErrOtherImage) {
		t.Errorf("another image's state: err = %v", err)
	}
}
