package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vmscope/vmscope/internal/journalfile"
	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// The undo journal is inject's record of every change it makes to the
// dummy, for Recover after vmscope is killed outright: the saved
// registers, the stack bytes it borrows, the signal mask it blocked, the
// mapping it made and the call in flight. It is written atomically (a
// temporary file, fsync, rename, fsync of the folder) before each change,
// so that at any moment it names at least every change made; it is
// removed once the dummy is restored and verified. While a process works
// with it, it holds an exclusive flock on PATH.lock.

const journalVersion = 1

// ErrJournal is a journal that does not parse or names an impossible state.
var ErrJournal = vmerr.New("inject: bad journal", vmerr.ErrCorrupt)

// ErrInUse is a journal another vmscope process holds.
var ErrInUse = errors.New("inject: another vmscope holds this journal")

// ErrLeftBehind is a journal a killed vmscope left: run recover first.
var ErrLeftBehind = errors.New("inject: a vmscope process left a dummy without restoring it (run `vmscope inject recover`)")

// journalDoc is the journal's JSON form.
type journalDoc struct {
	Version int       `json:"version"`
	Guest   string    `json:"guest"`
	PID     int       `json:"pid"` // the vmscope process
	Started time.Time `json:"started"`
	// Dummy identifies the borrowed task: a task with another start
	// time (the pid reused, the guest rebooted) is not it.
	Dummy     int    `json:"dummy_pid"`
	Task      uint64 `json:"dummy_task"`
	StartTime uint64 `json:"dummy_start_time"`
	PGD       uint64 `json:"dummy_pgd"`
	CPU       int    `json:"vcpu"`
	// Regs are the dummy's registers at the safe point.
	Regs   vmi.CPU `json:"regs"`
	Gadget uint64  `json:"gadget"`
	// Scratch: the stack bytes borrowed below the red zone (Orig, saved
	// before the first write) at VA / PA.
	ScratchVA   uint64 `json:"scratch_va,omitempty"`
	ScratchPA   uint64 `json:"scratch_pa,omitempty"`
	ScratchOrig []byte `json:"scratch_orig,omitempty"`
	// MaskBlocked: rt_sigprocmask blocked every signal (or was about to);
	// OldMask is the mask to put back once known (MaskKnown).
	MaskBlocked bool   `json:"mask_blocked"`
	MaskKnown   bool   `json:"mask_known"`
	OldMask     uint64 `json:"old_mask"`
	// MapPending: an mmap is in flight (its address is RAX at the
	// gadget's return); MapAddr/MapLen: the mapping made.
	MapPending bool   `json:"map_pending"`
	MapAddr    uint64 `json:"map_addr,omitempty"`
	MapLen     uint64 `json:"map_len,omitempty"`
	// FDs is the dummy's open-descriptor bitmap (its first words) at the
	// safe point: a descriptor open now and not then was opened by inject
	// and is closed at the end.
	FDs []uint64 `json:"fds"`
	// Call is the call in flight ("" between calls).
	Call string `json:"call,omitempty"`
	// RegsChanged: the dummy's registers may differ from Regs.
	RegsChanged bool `json:"regs_changed"`
}

// same reports whether t is still the dummy the journal names: the same
// pid, start time and page tables, and not exiting (a task past do_exit,
// or a pid reused, a guest rebooted, an exec, is not it).
func (d *journalDoc) same(t taskState) bool {
	return t.PID == d.Dummy && t.StartTime == d.StartTime && uint64(t.PGD) == d.PGD && t.Flags&pfExiting == 0 && t.ExitState == 0
}

type journal struct {
	path string
	lock *os.File
	doc  journalDoc
}

// lockJournal takes the journal's lock and reads the journal there (nil
// when none).
func lockJournal(path string) (*os.File, *journalDoc, error) {
	lf, b, err := journalfile.Lock(path)
	if errors.Is(err, journalfile.ErrBusy) {
		return nil, nil, fmt.Errorf("%w (%s.lock)", ErrInUse, path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("inject: %w", err)
	}
	if b == nil {
		return lf, nil, nil
	}
	var d journalDoc
	if len(b) > journalfile.MaxSize || json.Unmarshal(b, &d) != nil || d.Version != journalVersion || len(d.ScratchOrig) > 4096 || len(d.FDs) > maxFDWords {
		unlock(lf)
		return nil, nil, fmt.Errorf("%w: %s", ErrJournal, path)
	}
	return lf, &d, nil
}

func unlock(lf *os.File) { journalfile.Unlock(lf) }

// openJournal takes a fresh journal; one left behind is refused.
func openJournal(path, guest string) (*journal, error) {
	lf, old, err := lockJournal(path)
	if err != nil {
		return nil, err
	}
	if old != nil {
		unlock(lf)
		return nil, fmt.Errorf("%w: journal %s of pid %d since %s", ErrLeftBehind, path, old.PID, old.Started.Format(time.RFC3339))
	}
	return &journal{path: path, lock: lf, doc: journalDoc{Version: journalVersion, Guest: guest, PID: os.Getpid(), Started: time.Now().UTC().Truncate(time.Second)}}, nil
}

// update changes the journal and writes it durably before the change it
// records is made.
func (j *journal) update(f func(*journalDoc)) error {
	f(&j.doc)
	return writeAtomic(j.path, &j.doc)
}

// finish removes the journal (the dummy is restored) and releases the lock.
func (j *journal) finish() error {
	err := journalfile.Remove(j.path)
	unlock(j.lock)
	return err
}

// keep releases the lock and leaves the journal for Recover.
func (j *journal) keep() { unlock(j.lock) }

func writeAtomic(path string, d *journalDoc) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	if err := journalfile.WriteAtomic(path, append(b, '\n')); err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	return nil
}
