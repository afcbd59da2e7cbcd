package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Holder is who holds an image's lock, as written into the lock file.
type Holder struct {
	Host  string    `json:"host"`
	PID   int       `json:"pid"`
	RunID string    `json:"run_id"`
	Start time.Time `json:"start"`
}

func (h Holder) String() string {
	return fmt.Sprintf("%s pid %d run %q since %s", h.Host, h.PID, h.RunID, h.Start.UTC().Format(time.RFC3339))
}

// LockedError: another poller holds the image's lock.
type LockedError struct {
	Path   string
	Holder *Holder // nil when the lock file names nobody yet
}

func (e *LockedError) Error() string {
	if e.Holder == nil {
		return "locked by another poller (" + e.Path + ")"
	}
	return "locked by " + e.Holder.String()
}

// Lock is a held image lock (flock on DIR/<id>.lock).
type Lock struct {
	f *os.File
}

// lockPoll is how often a waiting TryLock retries.
const lockPoll = 50 * time.Millisecond

// AcquireLock takes the exclusive flock of the file at path (created when
// missing), waiting at most wait (0: one try) and never past ctx, and
// writes who holds it. A lock held by another returns a *LockedError
// naming its holder. The kernel releases the lock when the holder dies.
func AcquireLock(ctx context.Context, path string, wait time.Duration, who Holder) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !time.Now().Before(deadline) {
			h := readHolder(f)
			f.Close()
			return nil, &LockedError{Path: path, Holder: h}
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(min(lockPoll, time.Until(deadline)+time.Millisecond)):
		}
	}
	// Who holds it, for the poller that finds it held; a lock whose
	// holder could not be written is still held.
	b, _ := json.Marshal(who)
	if f.Truncate(0) == nil {
		f.WriteAt(append(b, '\n'), 0)
	}
	return &Lock{f}, nil
}

func readHolder(f *os.File) *Holder {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 4096))
	if err != nil || len(b) == 0 {
		return nil
	}
	var h Holder
	if json.Unmarshal(b, &h) != nil {
		return nil
	}
	return &h
}

// Release drops the lock. The lock file stays (removing it would let a
// waiter lock an unlinked file while a third creates a new one).
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
