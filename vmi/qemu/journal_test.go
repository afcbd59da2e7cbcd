package qemu

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestJournal checks the journal's life: the lock refuses a second holder,
// every write is whole JSON naming each trap once, a journal left by a
// process that did not finish refuses the next Open with a
// *LeftBehindError, and finish removes it.
func TestJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.json")
	sp := Spec{GDB: "127.0.0.1:1234", QMP: "/tmp/q.sock"}
	j, err := openJournal(path, sp.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openJournal(path, sp.String()); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open while held: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("journal written before the first change: %v", err)
	}
	if err := j.begin(foundRunning); err != nil {
		t.Fatal(err)
	}
	read := func() journalDoc {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var d journalDoc
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("journal is not JSON: %v\n%s", err, b)
		}
		return d
	}
	if d := read(); d.Found != foundRunning || !d.Attached || d.Guest != sp.String() || d.PID != os.Getpid() || len(d.Traps) != 0 {
		t.Errorf("after begin: %+v", d)
	}
	bp := Breakpoint{Kind: SoftwareBreak, Addr: 0xffffffff81000000, Size: 1}
	wp := Breakpoint{Kind: WriteWatch, Addr: 0xffffffff82000008, Size: 8}
	for _, b := range []Breakpoint{bp, wp, bp, wp} {
		if err := j.addTrap(b); err != nil {
			t.Fatal(err)
		}
	}
	d := read()
	if len(d.Traps) != 2 {
		t.Fatalf("traps %+v, want the two once each", d.Traps)
	}
	for i, want := range []Breakpoint{bp, wp} {
		if got, err := d.Traps[i].breakpoint(); err != nil || got != want {
			t.Errorf("trap %d: %+v %v, want %+v", i, got, err, want)
		}
	}
	// no temporary file is left beside it
	if m, _ := filepath.Glob(path + ".tmp-*"); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
	// the process goes away without finishing: the next Open is refused
	j.keep()
	_, err = openJournal(path, sp.String())
	var lb *LeftBehindError
	if !errors.As(err, &lb) || !errors.Is(err, ErrLeftBehind) || lb.PID != os.Getpid() || lb.Path != path {
		t.Fatalf("open after a journal was left: %v", err)
	}
	// a hostile or broken journal is refused, not trusted
	if err := os.WriteFile(path, []byte(`{"version":1,"traps":[{"z":9,"addr":"0x1","len":1}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	lf, doc, err := lockJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := doc.Traps[0].breakpoint(); !errors.Is(err, ErrJournal) {
		t.Errorf("trap of Z type 9: %v", err)
	}
	unlock(lf)
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lockJournal(path); !errors.Is(err, ErrJournal) {
		t.Errorf("truncated journal: %v", err)
	}
	os.Remove(path)
	j, err = openJournal(path, sp.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := j.begin(foundPaused); err != nil {
		t.Fatal(err)
	}
	if err := j.finish(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal left after finish: %v", err)
	}
	if j, err = openJournal(path, sp.String()); err != nil {
		t.Fatalf("open after finish: %v", err)
	}
	j.discard()
}

func TestJournalPath(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	p, err := JournalPath(Spec{GDB: "10.0.0.1:1234", QMP: "/x"})
	if err != nil || p != "/run/user/1000/vmscope/gdb-10.0.0.1_1234.json" {
		t.Errorf("%q %v", p, err)
	}
	p, _ = JournalPath(Spec{GDB: "[::1]:1234"})
	if filepath.Base(p) != "gdb-___1__1234.json" {
		t.Errorf("%q", p)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if p, _ := JournalPath(Spec{GDB: "h:1"}); p != "/run/vmscope/gdb-h_1.json" {
		t.Errorf("%q", p)
	}
}
