// Package journalfile is the file under an undo journal (vmi/qemu's traps
// and pauses, inject's borrowed dummy): a JSON document at PATH guarded by
// an exclusive flock on PATH.lock, read bounded and replaced atomically, so
// a reader sees the old journal or the new one, never a part.
package journalfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrBusy is Lock's error when another process holds the lock.
var ErrBusy = errors.New("journal lock held by another process")

// MaxSize is the most a journal may hold. Lock reads at most one byte
// more, so a caller sees that a journal is too big without reading it all.
const MaxSize = 1 << 20

// Lock makes path's folder, takes PATH.lock without waiting, and reads the
// journal at path: nil when there is none. The caller releases the lock
// with Unlock.
func Lock(path string) (*os.File, []byte, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, nil, fmt.Errorf("journal folder: %w", err)
	}
	lf, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("journal lock: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, ErrBusy
		}
		return nil, nil, fmt.Errorf("journal lock %s.lock: %w", path, err)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return lf, nil, nil
	}
	if err != nil {
		Unlock(lf)
		return nil, nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		Unlock(lf)
		return nil, nil, fmt.Errorf("journal: %w", err)
	}
	return lf, b, nil
}

// Unlock releases a lock Lock took.
func Unlock(lf *os.File) {
	syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	lf.Close()
}

// WriteAtomic writes b to path through a temporary file in the same
// folder, fsynced, renamed over path, and the folder fsynced.
func WriteAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("journal %s: %w", path, err)
	}
	df, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("journal folder: %w", err)
	}
	defer df.Close()
	if err := df.Sync(); err != nil {
		return fmt.Errorf("journal folder: %w", err)
	}
	return nil
}

// Remove removes the journal at path; one already gone is no error.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
