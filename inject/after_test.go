package inject

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/inject/injecttest"
	"github.com/vmscope/vmscope/vmi/linux"
)

// paused runs fn with the guest paused.
func (lv *live) paused(t *testing.T, fn func(ctx context.Context)) {
	t.Helper()
	ctx := context.Background()
	if err := lv.g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := lv.g.Resume(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	fn(ctx)
}

// hasReason reports whether a reason starts with prefix and holds every
// one of parts.
func hasReason(v Verdict, prefix string, parts ...string) bool {
	return slices.ContainsFunc(v.Reasons, func(r string) bool {
		if !strings.HasPrefix(r, prefix) {
			return false
		}
		for _, p := range parts {
			if !strings.Contains(r, p) {
				return false
			}
		}
		return true
	})
}

// afterNetstat checks the sockets walked in memory against the guest's
// own netstat -an (printed at boot) and the socket inode of nc's
// descriptor, then the netstat after-check: it passes on the guest's
// answer, and fails on an answer with the nc listener hidden or a line
// made up (what a rootkit filtering /proc/net would give).
func afterNetstat(t *testing.T, l *injecttest.Guest, lv *live) {
	nc := l.Role("nc")
	fds, err := l.Run(fmt.Sprintf("ls -l /proc/%d/fd", nc))
	if err != nil {
		t.Fatal(err)
	}
	var ncInode uint64
	for _, f := range fds {
		if _, s, ok := strings.Cut(f, "socket:["); ok {
			ncInode, _ = strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
		}
	}
	if ncInode == 0 {
		t.Fatalf("nc (pid %d) holds no socket: %q", nc, fds)
	}
	var mem []linux.Socket
	lv.paused(t, func(ctx context.Context) {
		var probs []linux.Problem
		if mem, probs, err = lv.k.Sockets(ctx); err != nil || len(probs) > 0 {
			t.Fatalf("sockets in memory: %v %+v", err, probs)
		}
	})
	var want, got []string
	for _, line := range l.Section("netstat") {
		f := strings.Fields(line)
		if len(f) >= 6 && (f[0] == "tcp" || f[0] == "udp") {
			want = append(want, f[0]+" "+f[3]+" "+f[4]+" "+f[5])
		}
	}
	listener := false
	for _, s := range mem {
		got = append(got, memLine(s))
		if s.Inode == ncInode && s.State == linux.TCPListen && s.Local.Port() == 4444 {
			listener = true
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if len(want) == 0 || !slices.Equal(want, got) {
		t.Errorf("sockets in memory %q, the guest's netstat -an %q", got, want)
	}
	if !listener {
		t.Errorf("no listening socket on port 4444 with nc's inode %d in memory: %+v", ncInode, mem)
	}

	res, err := lv.runOn(t, Op{Kind: "netstat"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := verdict(res, "after")
	t.Logf("netstat after-check: %+v", v)
	if v.Status != "pass" || !hasReason(v, "socket tables in memory: ", fmt.Sprintf("%d /proc/net lines checked, %d sockets present before and after checked", len(want), len(want))) {
		t.Errorf("netstat after-check: %+v, want a pass with %d lines and sockets checked", v, len(want))
	}

	// the same answer with the listener hidden, then with a line added
	var hidden []Socket
	for _, s := range res.Sockets {
		if s.Inode != ncInode {
			hidden = append(hidden, s)
		}
	}
	madeUp := append(slices.Clone(res.Sockets), Socket{Proto: "tcp", Local: "0.0.0.0:31337", Remote: "0.0.0.0:0", State: "LISTEN", Inode: 999999})
	lv.paused(t, func(ctx context.Context) {
		before := socketView(ctx, lv.k)
		lie := *res
		lie.Sockets = hidden
		v := crossView(ctx, lv.k, Op{Kind: "netstat"}, &lie, nil, before)
		if v.Status != "fail" || !hasReason(v, "", ":4444", "hidden from /proc/net", strconv.FormatUint(ncInode, 10)) {
			t.Errorf("the listener hidden from /proc/net: %+v", v)
		}
		// a socket missing from the view before appeared during the
		// operation: counted, not reported
		late := &memView{socks: slices.DeleteFunc(slices.Clone(before.socks), func(s linux.Socket) bool { return s.Inode == ncInode })}
		v = crossView(ctx, lv.k, Op{Kind: "netstat"}, &lie, nil, late)
		if v.Status != "pass" || !hasReason(v, "socket tables in memory: ", "1 changed during the operation") {
			t.Errorf("the listener missing from /proc/net and from the view before: %+v", v)
		}
		lie.Sockets = madeUp
		v = crossView(ctx, lv.k, Op{Kind: "netstat"}, &lie, nil, before)
		if v.Status != "fail" || len(v.Reasons) != 2 || !hasReason(v, "", "0.0.0.0:31337", "in none of the kernel's socket tables") {
			t.Errorf("a made-up /proc/net line: %+v", v)
		}
	})
}

// afterDcache checks the dentry cache in memory against the guest's own
// stat of the fixture paths (printed at boot, which cached them), then
// the after-check of ls, stat and cat by the dentry cache: alone (no
// disk image) and beside the disk image; and that it fails on answers
// that hide a cached name or change a cached inode's size.
func afterDcache(t *testing.T, l *injecttest.Guest, lv *live, disk *DiskView) {
	stats := l.Section("stat")
	if len(stats) < 5 {
		t.Fatalf("stat section %q", stats)
	}
	lv.paused(t, func(ctx context.Context) {
		for _, line := range stats {
			f := strings.Split(line, "|")
			d, err := lv.k.LookupCached(ctx, 0, f[0])
			if err != nil || d.Inode == nil {
				t.Errorf("dentry cache: %s: %+v %v", f[0], d, err)
				continue
			}
			in := d.Inode
			got := fmt.Sprintf("%s|%d|%x|%d|%d|%d|%d", f[0], in.Ino, in.Mode, in.Nlink, in.UID, in.GID, in.Size)
			if want := strings.Join(f[:7], "|"); got != want {
				t.Errorf("dentry cache:\n got %s\nwant %s (the guest's stat)", got, want)
			}
		}
		if _, err := lv.k.LookupCached(ctx, 0, "/mnt/data/known/no-such-name"); err == nil {
			t.Error("a name never looked up is in the dentry cache")
		}
	})

	known := "/mnt/data/known"
	ls, err := lv.runOn(t, Op{Kind: "ls", Path: known, Long: true}, Options{Disk: disk})
	if err != nil {
		t.Fatal(err)
	}
	v := verdict(ls, "after")
	t.Logf("ls after-check: %+v", v)
	// the boot's ls -lan cached every name of the directory
	n := len(ls.Entries) - 2
	if v.Status != "pass" || !hasReason(v, "dentry cache: ", fmt.Sprintf("%d cached names of %s listed alike", n, known)) || !hasReason(v, "disk image: ", "agrees") || n < 5 {
		t.Errorf("ls after-check with both views: %+v (%d entries)", v, n)
	}

	st, err := lv.runOn(t, Op{Kind: "stat", Path: known + "/hello.txt"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if v := verdict(st, "after"); v.Status != "pass" || !hasReason(v, "dentry cache: ", "inode compared") {
		t.Errorf("stat after-check by the dentry cache alone: %+v", v)
	}
	cat, err := lv.runOn(t, Op{Kind: "cat", Path: known + "/sub/nested.txt"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if v := verdict(cat, "after"); v.Status != "pass" || !hasReason(v, "dentry cache: ", "size compared") || cat.Size == 0 {
		t.Errorf("cat after-check by the dentry cache alone: %+v", v)
	}

	// answers that lie: a cached name hidden, a size changed
	lv.paused(t, func(ctx context.Context) {
		lie := *ls
		lie.Entries = slices.DeleteFunc(slices.Clone(ls.Entries), func(e Entry) bool { return e.Name == "owned.txt" })
		v := crossView(ctx, lv.k, Op{Kind: "ls", Path: known}, &lie, nil, nil)
		if v.Status != "fail" || !hasReason(v, "dentry cache: ", known+"/owned.txt", "hid it") {
			t.Errorf("ls hiding owned.txt: %+v", v)
		}
		// the same answer when owned.txt was first cached during the
		// operation (the view before has every child but it): a race,
		// counted and not reported; with it there before, reported
		before := viewBefore(ctx, lv.k, Op{Kind: "ls", Path: known}, &lie)
		if len(before.kids) < n {
			t.Fatalf("the view before holds %d children, want %d", len(before.kids), n)
		}
		v = crossView(ctx, lv.k, Op{Kind: "ls", Path: known}, &lie, nil, before)
		if v.Status != "fail" {
			t.Errorf("ls hiding owned.txt, cached before and after: %+v", v)
		}
		for a, key := range before.kids {
			if strings.HasPrefix(key, "owned.txt ") {
				delete(before.kids, a)
			}
		}
		v = crossView(ctx, lv.k, Op{Kind: "ls", Path: known}, &lie, nil, before)
		if v.Status != "pass" || !hasReason(v, "dentry cache: ", "1 dentries changed during the operation") {
			t.Errorf("ls without owned.txt, which was cached only after: %+v", v)
		}
		lst := *st
		s := *st.Stat
		s.Size++
		lst.Stat = &s
		v = crossView(ctx, lv.k, Op{Kind: "stat", Path: known + "/hello.txt"}, &lst, nil, nil)
		if v.Status != "fail" || !hasReason(v, "dentry cache: stat of "+known+"/hello.txt") {
			t.Errorf("stat with the size changed: %+v", v)
		}
		lc := *cat
		lc.Size--
		v = crossView(ctx, lv.k, Op{Kind: "cat", Path: known + "/sub/nested.txt"}, &lc, nil, nil)
		if v.Status != "fail" || !hasReason(v, "dentry cache: "+known+"/sub/nested.txt") {
			t.Errorf("cat one byte short: %+v", v)
		}
	})
}

// primeHidden opens the rootkit's hidden file in the guest, so its dentry
// is in the cache (the rootkit hides the name from getdents64 only).
func primeHidden(t *testing.T, l *injecttest.Guest) {
	out, err := l.Run("cat /mnt/data/vmscope_hidden_data")
	if err != nil || len(out) != 1 || !strings.Contains(out[0], "hides this name") {
		t.Fatalf("cat of the hidden file in the guest: %q %v", out, err)
	}
}

// afterRootkit checks the after-check of the ls the rootkit lied to: the
// disk image and the dentry cache both name the hidden file, and the
// dentry cache alone (no disk image) does too.
func afterRootkit(t *testing.T, lv *live, op Op, res *Result) {
	v := verdict(res, "after")
	t.Logf("after-check: %+v", v)
	if v.Status != "fail" || !res.Findings() || !hasReason(v, "disk image: ", "/vmscope_hidden_data", "on the disk but the kernel's getdents64 hid it") ||
		!hasReason(v, "dentry cache: ", "/mnt/data/vmscope_hidden_data", "is cached, but the kernel's getdents64 hid it") {
		t.Errorf("after-check: %+v, want the hidden file reported by the disk image and the dentry cache", v)
	}
	if n := len(slices.DeleteFunc(slices.Clone(v.Reasons), func(r string) bool { return !strings.Contains(r, "hid it") })); n != 2 {
		t.Errorf("after-check: %d disagreements, want 2 (one per view): %q", n, v.Reasons)
	}
	lv.paused(t, func(ctx context.Context) {
		v := crossView(ctx, lv.k, op, res, nil, nil)
		if v.Status != "fail" || !hasReason(v, "dentry cache: ", "/mnt/data/vmscope_hidden_data", "hid it") {
			t.Errorf("the dentry cache alone: %+v", v)
		}
	})
}
