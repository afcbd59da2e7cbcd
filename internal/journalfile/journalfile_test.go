package journalfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestLockWriteRead: a journal written is read back under the lock; a
// second Lock while the first is held is ErrBusy; Remove of a journal
// already gone is no error.
func TestLockWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "j.json")
	lf, b, err := Lock(path)
	if err != nil || b != nil {
		t.Fatalf("first Lock: %q, %v", b, err)
	}
	if _, _, err := Lock(path); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Lock: %v, want ErrBusy", err)
	}
	if err := WriteAtomic(path, []byte("{\"v\":1}\n")); err != nil {
		t.Fatal(err)
	}
	Unlock(lf)
	lf, b, err = Lock(path)
	if err != nil || string(b) != "{\"v\":1}\n" {
		t.Fatalf("Lock after write: %q, %v", b, err)
	}
	defer Unlock(lf)
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := Remove(path); err != nil {
		t.Fatalf("Remove of a removed journal: %v", err)
	}
}

// TestLockReadsBounded: a journal larger than MaxSize is read only up to
// MaxSize+1 bytes, so the caller refuses it without reading it all.
func TestLockReadsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.json")
	if err := os.WriteFile(path, bytes.Repeat([]byte{'x'}, 3*MaxSize), 0o600); err != nil {
		t.Fatal(err)
	}
	lf, b, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	defer Unlock(lf)
	if len(b) != MaxSize+1 {
		t.Fatalf("read %d bytes, want %d", len(b), MaxSize+1)
	}
}
