package linux_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
)

// TestSocketsDcacheInDump walks the sockets and the dentry cache of the
// fixture guest's dump and checks them against what the guest printed
// before it: /proc/net/tcp (IPv4 TCP), the socket inodes of every
// process's descriptors (ls -l /proc/PID/fd), nc's listener on port
// 4444, and the paths and inodes its processes hold open.
func TestSocketsDcacheInDump(t *testing.T) {
	ctx := context.Background()
	truth := guesttest.Load(t, guesttest.KASLR)
	_, k := open(t, guesttest.KASLR, guesttest.KdumpDump)
	socks, probs, err := k.Sockets(ctx)
	if err != nil || len(probs) > 0 {
		t.Fatalf("sockets: %v %+v", err, probs)
	}
	owner := map[uint64]int{} // socket inode -> pid holding it
	for pid, fds := range truth.FDs {
		for _, f := range fds {
			var ino uint64
			if _, err := fmt.Sscanf(f.Target, "socket:[%d]", &ino); err == nil {
				owner[ino] = pid
			}
		}
	}
	var tcp4 []string
	listener := false
	for _, s := range socks {
		t.Logf("%s %s %s -> %s state %d inode %d", s.Table, s.Proto, s.Local, s.Remote, s.State, s.Inode)
		if s.Proto == "tcp" {
			tcp4 = append(tcp4, fmt.Sprintf("%s %s", s.Local, s.Remote))
		}
		if _, ok := owner[s.Inode]; !ok {
			t.Errorf("socket %+v: no process holds inode %d", s, s.Inode)
		}
		if owner[s.Inode] == truth.Scenario["nc"] && s.State == linux.TCPListen && s.Local.Port() == 4444 && strings.HasPrefix(s.Table, "tcp listening") {
			listener = true
		}
	}
	var lines []string
	for _, l := range truth.Sections["net-tcp"] {
		if f := strings.Fields(l); len(f) > 3 && f[0] != "sl" {
			lines = append(lines, l)
		}
	}
	if len(tcp4) != len(lines) {
		t.Errorf("IPv4 TCP sockets in memory %q, /proc/net/tcp %q", tcp4, lines)
	}
	if !listener || truth.Scenario["nc"] == 0 {
		t.Errorf("no listener of nc (pid %d) on port 4444 in memory", truth.Scenario["nc"])
	}

	// the paths the processes hold open are cached, with the inode of the descriptor
	files, _, err := k.Files(ctx, mustTasks(t, k), 0)
	if err != nil {
		t.Fatal(err)
	}
	n, shadowed := 0, 0
	for _, f := range files {
		if !strings.HasPrefix(f.Path, "/") || strings.HasSuffix(f.Path, " (deleted)") {
			continue
		}
		d, err := k.LookupCached(ctx, 0, f.Path)
		vfsmnt, merr := k.ReadUint("file", vmi.VA(f.Addr), "f_path.mnt")
		mntOff, oerr := k.Field("mount", "mnt")
		if merr != nil || oerr != nil {
			t.Fatal(merr, oerr)
		}
		if err == nil && d.Mount != vfsmnt-mntOff {
			// opened before a mount hid it (pid 1's /dev/console of the
			// initramfs, under devtmpfs): the path now names another file
			shadowed++
			continue
		}
		if err != nil || d.Inode == nil || d.Inode.Ino != f.Inode {
			t.Errorf("fd %d of pid %d (%s, inode %d): dentry cache %+v %v", f.FD, f.PID, f.Path, f.Inode, d.Inode, err)
		}
		n++
	}
	if n < 10 {
		t.Errorf("%d open paths looked up", n)
	}
	t.Logf("%d open paths found in the dentry cache with their inode, %d under a later mount", n, shadowed)
	tmp, err := k.LookupCached(ctx, 0, "/tmp")
	if err != nil {
		t.Fatal(err)
	}
	kids, err := k.CachedChildren(ctx, tmp)
	if err != nil || len(kids) < 2 {
		t.Errorf("children of /tmp: %+v %v", kids, err)
	}
	if _, err := k.LookupCached(ctx, 0, "/tmp/no-such-name-ever"); err == nil {
		t.Error("a name never looked up is cached")
	}
}

func mustTasks(t *testing.T, k *linux.Kernel) []linux.Task {
	tasks, _, err := k.Tasks(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	return tasks
}
