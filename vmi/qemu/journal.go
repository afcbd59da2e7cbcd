package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/vmscope/vmscope/internal/journalfile"
	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// The journal is vmscope's record of what it did to a guest, for Release
// after a SIGKILL: QEMU keeps a guest stopped with its traps armed when
// its GDB client dies, and the stub cannot list the traps it holds.
//
// It is written atomically (a temporary file, fsync, rename, fsync of the
// folder) before the first change (attaching the stub, a QMP stop), then
// again before each new trap is inserted, and removed once Close has
// restored the guest. While a process works on a guest it holds an
// exclusive flock on PATH.lock, so a second vmscope (or Release) on the
// same guest is refused rather than interleaved.

// The run states a journal records.
const (
	foundRunning = "running"
	foundPaused  = "paused"
	foundUnknown = "unknown" // no QMP: Close detaches, which resumes
)

// journalVersion is the version of the journal's JSON form.
const journalVersion = 1

// journalDoc is the journal's JSON form.
type journalDoc struct {
	Version int       `json:"version"`
	Guest   string    `json:"guest"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	// Found is the run state before vmscope changed anything: "running",
	// "paused" or "unknown" (no QMP).
	Found string `json:"found"`
	// Attached: the GDB stub was attached (or about to be), which stops
	// the guest.
	Attached bool `json:"attached"`
	// PhysicalMode: Qqemu.PhyMemMode was (about to be) turned on.
	PhysicalMode bool `json:"physical_mode"`
	// Traps is every trap inserted (or about to be), in order.
	Traps []journalTrap `json:"traps"`
	// QMPStopped: a QMP stop was sent (guest dump) and its cont may not
	// have followed.
	QMPStopped bool `json:"qmp_stopped"`
}

// journalTrap is a trap as the stub took it: the Z type, the address and
// the length.
type journalTrap struct {
	Z    int    `json:"z"`
	Addr string `json:"addr"` // hex, 0x-prefixed
	Len  int    `json:"len"`
}

func (t journalTrap) breakpoint() (Breakpoint, error) {
	a, err := strconv.ParseUint(t.Addr, 0, 64)
	if err != nil || t.Z < int(SoftwareBreak) || t.Z > int(AccessWatch) || t.Len < 1 || t.Len > 8 {
		return Breakpoint{}, fmt.Errorf("%w: trap %+v", ErrJournal, t)
	}
	return Breakpoint{Kind: BreakKind(t.Z), Addr: vmi.VA(a), Size: t.Len}, nil
}

var (
	// ErrInUse is a guest another vmscope process is working on (it holds
	// the journal's lock).
	ErrInUse = errors.New("qemu: another vmscope is attached to this guest")
	// ErrLeftBehind is a guest a vmscope process left without restoring it
	// (killed): its journal is still there. Release restores it.
	ErrLeftBehind = errors.New("qemu: a vmscope process left this guest without restoring it")
	// ErrJournal is a journal that does not parse.
	ErrJournal = vmerr.New("qemu: bad journal", vmerr.ErrCorrupt)
)

// LeftBehindError names the journal a killed vmscope left. It wraps
// ErrLeftBehind.
type LeftBehindError struct {
	Path  string
	Guest string
	PID   int
	Since time.Time
}

func (e *LeftBehindError) Error() string {
	return fmt.Sprintf("qemu: guest %s was left by vmscope (pid %d, since %s) without being restored (journal %s): run `vmscope guest release --guest %s` first",
		e.Guest, e.PID, e.Since.Format(time.RFC3339), e.Path, e.Guest)
}

func (e *LeftBehindError) Unwrap() error { return ErrLeftBehind }

// JournalDir is the folder of the default journals: $XDG_RUNTIME_DIR/vmscope,
// or /run/vmscope without XDG_RUNTIME_DIR.
func JournalDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "vmscope")
	}
	return "/run/vmscope"
}

// JournalPath is the default journal of a guest: in JournalDir, named by
// the guest's GDB stub address (the stub is what holds the traps), or by
// the QEMU process's pid for a qemu: spec without a stub.
func JournalPath(sp Spec) (string, error) {
	var name []byte
	switch {
	case sp.GDB != "":
		name = []byte("gdb-" + sp.GDB)
	case sp.PID > 0:
		name = []byte("qemu-pid-" + strconv.Itoa(sp.PID))
	default:
		return "", errors.New("qemu: journal: the guest spec has no GDB address and no QEMU pid")
	}
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			name[i] = '_'
		}
	}
	return filepath.Join(JournalDir(), string(name)+".json"), nil
}

// journal is an open journal: its lock is held. A nil *journal does
// nothing (a Guest opened WithoutJournal).
type journal struct {
	path string
	lock *os.File

	mu      sync.Mutex
	doc     journalDoc
	written bool
}

// lockJournal takes the journal's lock (ErrInUse when another process
// holds it) and reads the journal there, if any (nil when none).
func lockJournal(path string) (*os.File, *journalDoc, error) {
	lf, b, err := journalfile.Lock(path)
	if errors.Is(err, journalfile.ErrBusy) {
		return nil, nil, fmt.Errorf("%w (lock %s.lock)", ErrInUse, path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("qemu: %w (set XDG_RUNTIME_DIR or give a journal path)", err)
	}
	if b == nil {
		return lf, nil, nil
	}
	var d journalDoc
	if len(b) > journalfile.MaxSize || json.Unmarshal(b, &d) != nil || d.Version != journalVersion {
		unlock(lf)
		return nil, nil, fmt.Errorf("%w: %s", ErrJournal, path)
	}
	return lf, &d, nil
}

func unlock(lf *os.File) { journalfile.Unlock(lf) }

// openJournal takes the journal of a guest Open is about to attach; it
// refuses a guest whose journal a killed vmscope left.
func openJournal(path string, guest string) (*journal, error) {
	lf, old, err := lockJournal(path)
	if err != nil {
		return nil, err
	}
	if old != nil {
		unlock(lf)
		return nil, &LeftBehindError{Path: path, Guest: old.Guest, PID: old.PID, Since: old.Started}
	}
	return &journal{path: path, lock: lf, doc: journalDoc{
		Version: journalVersion, Guest: guest, PID: os.Getpid(), Started: time.Now().UTC().Truncate(time.Second), Traps: []journalTrap{},
	}}, nil
}

// begin records the run state found and that the stub is about to be
// attached, and writes the journal: the first write, before the first
// change.
func (j *journal) begin(found string) error {
	return j.update(func(d *journalDoc) { d.Found, d.Attached = found, true })
}

// beginStop records the run state found and that a QMP stop is about to
// be sent (Pause without the stub): Release then sends cont if the guest
// ran.
func (j *journal) beginStop(found string) error {
	return j.update(func(d *journalDoc) { d.Found, d.QMPStopped = found, true })
}

// update changes the journal and writes it (atomically).
func (j *journal) update(f func(*journalDoc)) error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	f(&j.doc)
	if err := writeAtomic(j.path, &j.doc); err != nil {
		return err
	}
	j.written = true
	return nil
}

// addTrap records a trap before it is inserted (once: a trap removed and
// inserted again, as the step-and-re-arm loop does, is not written again).
func (j *journal) addTrap(bp Breakpoint) error {
	if j == nil {
		return nil
	}
	t := journalTrap{Z: int(bp.Kind), Addr: fmt.Sprintf("%#x", uint64(bp.Addr)), Len: bp.Size}
	j.mu.Lock()
	for _, x := range j.doc.Traps {
		if x == t {
			j.mu.Unlock()
			return nil
		}
	}
	j.mu.Unlock()
	return j.update(func(d *journalDoc) { d.Traps = append(d.Traps, t) })
}

// finish removes the journal (the guest is restored) and releases the lock.
func (j *journal) finish() error {
	if j == nil {
		return nil
	}
	err := journalfile.Remove(j.path)
	unlock(j.lock)
	if err != nil {
		return fmt.Errorf("qemu: journal: %w", err)
	}
	return nil
}

// discard is finish when nothing was changed.
func (j *journal) discard() { j.finish() }

// keep releases the lock and leaves the journal for Release.
func (j *journal) keep() {
	if j != nil {
		unlock(j.lock)
	}
}

// writeAtomic writes d to path through a temporary file in the same
// folder, fsynced, renamed over path, and the folder fsynced: a reader
// sees the old journal or the new one, never a part.
func writeAtomic(path string, d *journalDoc) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	if err := journalfile.WriteAtomic(path, append(b, '\n')); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}
