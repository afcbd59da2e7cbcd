package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/linux"
)

// TestMemSockets runs `mem sockets` on the guest fixture's dump (vmi/linux
// checks the walk against the guest's own /proc/net/tcp and descriptors):
// every socket's inode is a socket descriptor `mem files` shows, nc's
// listener on port 4444 is there, and the table shows each row as the JSON
// has it.
func TestMemSockets(t *testing.T) {
	dump := fixture.GuestPath(t, "kaslr", "guest.kdump")
	out, stderr, code := vmscope(t, "mem", "sockets", "--format", "json", dump)
	if code != 0 {
		t.Fatalf("mem sockets: exit %d: %s", code, stderr)
	}
	var doc struct {
		Sockets  []linux.Socket `json:"sockets"`
		Problems []any          `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	files, stderr, code := vmscope(t, "mem", "files", "--format", "json", dump)
	if code != 0 {
		t.Fatalf("mem files: exit %d: %s", code, stderr)
	}
	table, _, code := vmscope(t, "mem", "sockets", dump)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	for i := range lines {
		lines[i] = strings.Join(strings.Fields(lines[i]), " ")
	}
	if code != 0 || len(lines) != len(doc.Sockets)+1 || lines[0] != "PROTO LOCAL REMOTE STATE INODE TABLE" || len(doc.Problems) != 0 {
		t.Fatalf("mem sockets table (exit %d):\n%s\njson %+v", code, table, doc)
	}
	listener := false
	for _, s := range doc.Sockets {
		if !strings.Contains(files, fmt.Sprintf(`"socket:[%d]"`, s.Inode)) {
			t.Errorf("socket %+v: no descriptor of mem files holds inode %d", s, s.Inode)
		}
		listener = listener || (s.State == linux.TCPListen && s.Local.Port() == 4444)
		row := fmt.Sprintf("%s %s %s %s %d %s", s.Proto, s.Local, s.Remote, s.StateName(), s.Inode, s.Table)
		if !slices.Contains(lines, row) {
			t.Errorf("no table row %q:\n%s", row, table)
		}
	}
	if !listener {
		t.Errorf("no listener on port 4444: %+v", doc.Sockets)
	}
}
