package inject

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestJournal: a journal is written before a change and read back; a
// second holder is refused; one left behind is refused until recovered;
// a corrupt one is ErrJournal.
func TestJournal(t *testing.T) {
	p := filepath.Join(t.TempDir(), "j", "inject.json")
	j, err := openJournal(p, "g")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := lockJournal(p); !errors.Is(err, ErrInUse) {
		t.Errorf("second holder: %v", err)
	}
	if err := j.update(func(d *journalDoc) { d.Dummy, d.ScratchOrig, d.FDs = 95, []byte{1, 2, 3}, []uint64{0xf} }); err != nil {
		t.Fatal(err)
	}
	j.keep() // killed: the journal stays
	if _, err := openJournal(p, "g"); !errors.Is(err, ErrLeftBehind) {
		t.Errorf("left behind: %v", err)
	}
	lf, d, err := lockJournal(p)
	if err != nil || d == nil || d.Dummy != 95 || string(d.ScratchOrig) != "\x01\x02\x03" || len(d.FDs) != 1 {
		t.Fatalf("%+v %v", d, err)
	}
	unlock(lf)
	if err := os.WriteFile(p, []byte(`{"version":1,"scratch_orig":"`+string(make([]byte, 0))+`"`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lockJournal(p); !errors.Is(err, ErrJournal) {
		t.Errorf("corrupt journal: %v", err)
	}
}
