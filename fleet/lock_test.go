package fleet

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestLockWaitsThenRefuses: a held lock makes a second AcquireLock wait at
// most its wait and refuse naming the holder; once released the lock is
// taken; a cancelled context ends the wait at once.
func TestLockWaitsThenRefuses(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img.lock")
	ctx := context.Background()
	a, err := AcquireLock(ctx, p, 0, Holder{"h1", 11, "run-a", time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = AcquireLock(ctx, p, 200*time.Millisecond, Holder{"h2", 22, "run-b", time.Now()})
	var le *LockedError
	if !errors.As(err, &le) || le.Holder == nil || le.Holder.PID != 11 || le.Holder.RunID != "run-a" || le.Holder.Host != "h1" {
		t.Fatalf("second lock: %v, want LockedError naming pid 11", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 5*time.Second {
		t.Errorf("waited %v for a 200ms lock wait", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := AcquireLock(cctx, p, time.Hour, Holder{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
	go func() { time.Sleep(100 * time.Millisecond); a.Release() }()
	b, err := AcquireLock(ctx, p, 10*time.Second, Holder{"h2", 22, "run-b", time.Now()})
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	b.Release()
}
