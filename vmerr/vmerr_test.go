package vmerr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

func TestSentinelWrapsRoot(t *testing.T) {
	a := New("ext4: corrupt filesystem", ErrCorrupt)
	b := New("qcow: corrupt image", ErrCorrupt)
	err := Corrupt(a, "extent header of inode 12", 4096, "magic %#x", 0x1234)
	if !errors.Is(err, a) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("%v: not a and ErrCorrupt", err)
	}
	if errors.Is(err, b) || errors.Is(err, ErrUnsupported) {
		t.Fatalf("%v: is another sentinel", err)
	}
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Offset != 4096 || fe.Struct != "extent header of inode 12" {
		t.Fatalf("FormatError not found in %v", err)
	}
	if got, want := err.Error(), "extent header of inode 12 at offset 4096: ext4: corrupt filesystem: magic 0x1234"; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
}

func TestProblemJSON(t *testing.T) {
	p := Problem{Where: "/etc/x", Offset: -1, Err: fmt.Errorf("read: %w", New("ext4: x", ErrNotPresent))}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"where":"/etc/x","kind":"not-present","error":"read: ext4: x"}`; got != want {
		t.Fatalf("json %s, want %s", got, want)
	}
	p = Problem{Where: "dir inode 2", Offset: 24, Err: New("ext4: corrupt", ErrCorrupt)}
	b, _ = json.Marshal(p)
	if got, want := string(b), `{"where":"dir inode 2","offset":24,"kind":"corrupt","error":"ext4: corrupt"}`; got != want {
		t.Fatalf("json %s, want %s", got, want)
	}
	p = Problem{Where: "task list", Offset: -1, Addr: 0xffffffff81e0a940, Err: fmt.Errorf("cycle: %w", ErrCorrupt)}
	b, _ = json.Marshal(p)
	if got, want := string(b), `{"where":"task list","addr":18446744071593568576,"kind":"corrupt","error":"cycle: corrupt"}`; got != want {
		t.Fatalf("json %s, want %s", got, want)
	}
	if got, want := p.Error(), "task list at 0xffffffff81e0a940: cycle: corrupt"; got != want {
		t.Fatalf("Error() %q, want %q", got, want)
	}
}

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err      error
		findings bool
		want     int
	}{
		{nil, false, 0},
		{nil, true, 1},
		{errors.New("x"), false, 2},
		{errors.New("x"), true, 1},
		{fmt.Errorf("scan: %w", context.Canceled), true, 130},
	} {
		if got := ExitCode(c.err, c.findings); got != c.want {
			t.Errorf("ExitCode(%v, %v) = %d, want %d", c.err, c.findings, got, c.want)
		}
	}
}
