package inject

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strconv"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// The memory views of the after-check: what the kernel's own structures
// hold, read from guest memory with layouts from its BTF, beside what the
// injected calls returned.
//
// netstat: the sockets of the kernel's hash tables (linux.Sockets) are
// taken twice, while the guest is paused: before the dummy is borrowed
// and after it is restored, with the /proc/net reads in between. The rule
// for races:
//   - a /proc/net line (tcp, tcp6, udp, udp6) must be a socket of either
//     memory view (the same protocol, addresses, state and inode);
//     otherwise it was made up, or the socket lived only while the
//     operation ran (a short connection on a busy guest is reported too);
//   - a socket of the dummy's network namespace that is in both views,
//     the same object with the same protocol, addresses, state and inode,
//     existed through the whole operation, so /proc/net had to show it: a
//     socket missing from /proc/net is hidden (the kernel lies). Sockets
//     that appeared, ended or changed state between the views (TIME_WAIT
//     expiring, new connections) are counted, not compared;
//   - unix sockets are not compared (no memory view of them yet).
//
// ls, stat, cat: the dentry cache (linux.LookupCached), after the
// operation, from the root of the dummy's fs_struct (stat and cat: a file
// changed while the operation ran is reported). The cache holds what
// the kernel looked up and kept, so the view can prove a lie about a name
// it holds and nothing about a name it does not:
//   - ls: every cached, positive child of the directory must be listed,
//     with the same inode; a listed name the cache holds as negative (no
//     such file) is a lie; "." must be the directory's inode; with -l each
//     cached entry's stat must equal its inode. Uncached names are
//     unchecked. The directory's children are also taken before the
//     operation: a child that disagrees with the listing is a finding only
//     when the same dentry had the same name and inode (or was as
//     negative) before, so a file made, removed or first looked up while
//     the operation ran is counted, not reported;
//   - stat: a cached path must have the inode's number, mode, size, link
//     count, uid and gid; a negative dentry is a lie;
//   - cat: a cached regular file must have as many bytes as its inode's
//     size (an inode of size 0 is not compared: pseudo files have no
//     size); the content itself is not compared (the page cache is not
//     read).

// memView is one look at kernel memory: the socket tables (netstat), or
// the cached children of a directory (ls).
type memView struct {
	socks []linux.Socket
	probs []linux.Problem
	err   error
	// kids names each cached child dentry of the directory by its address:
	// its name and inode number (0: negative)
	kids map[uint64]string
}

// viewBefore takes the memory view an operation's after-check needs
// from before the operation (netstat: the sockets; ls: the directory's
// cached children), with the guest paused; nil for the others.
func viewBefore(ctx context.Context, k *linux.Kernel, op Op, res *Result) *memView {
	switch op.Kind {
	case "netstat":
		return socketView(ctx, k)
	case "ls":
		v := &memView{kids: map[uint64]string{}}
		d, err := k.LookupCached(ctx, dummyTask(res), path.Clean(op.Path))
		if err != nil || !d.IsDir() {
			return v // nothing cached before: no name was there all along
		}
		kids, _ := k.CachedChildren(ctx, d)
		for _, c := range kids {
			v.kids[c.Addr] = dentryKey(c)
		}
		return v
	}
	return nil
}

// dentryKey is a cached dentry's name and inode number (0: negative).
func dentryKey(d linux.Dentry) string {
	if d.Inode == nil {
		return d.Name + " 0"
	}
	return d.Name + " " + strconv.FormatUint(d.Inode.Ino, 10)
}

func socketView(ctx context.Context, k *linux.Kernel) *memView {
	s, p, err := k.Sockets(ctx)
	return &memView{socks: s, probs: p, err: err}
}

// dummyTask is the borrowed task, 0 when there was none.
func dummyTask(res *Result) vmi.VA {
	if res.Dummy == nil {
		return 0
	}
	return res.Dummy.task.Addr
}

// crossNetstat compares the /proc/net lines with the sockets in memory
// before and after (the rule above); it returns what it compared.
func crossNetstat(ctx context.Context, k *linux.Kernel, res *Result, before *memView, fail func(string, ...any)) string {
	after := socketView(ctx, k)
	if before == nil {
		before = after
	}
	for _, v := range []*memView{before, after} {
		if v.err != nil {
			fail("memory: sockets: %v", v.err)
			return ""
		}
	}
	for _, p := range append(before.probs, after.probs...) {
		fail("memory: %s at %#x: %v", p.Where, p.Addr, p.Err)
	}
	var net vmi.VA
	if t := dummyTask(res); t != 0 {
		n, err := k.TaskNet(t)
		if err != nil {
			fail("memory: network namespace of the dummy: %v", err)
			return ""
		}
		net = n
	}
	type ident struct {
		addr uint64
		key  string
	}
	inMem := map[string]bool{}
	was := map[ident]bool{}
	for _, s := range before.socks {
		if net == 0 || vmi.VA(s.Net) == net {
			inMem[memKey(s)] = true
			was[ident{s.Addr, memKey(s)}] = true
		}
	}
	var stable []linux.Socket
	changed := 0
	for _, s := range after.socks {
		if net != 0 && vmi.VA(s.Net) != net {
			continue
		}
		inMem[memKey(s)] = true
		if was[ident{s.Addr, memKey(s)}] {
			stable = append(stable, s)
		} else {
			changed++
		}
	}
	changed += len(was) - len(stable)
	shown := map[string]bool{}
	lines, unix := 0, 0
	for _, s := range res.Sockets {
		if s.Proto == "unix" {
			unix++
			continue
		}
		lines++
		key := procKey(s)
		shown[key] = true
		if !inMem[key] {
			fail("%q is in /proc/net/%s but in none of the kernel's socket tables (before or after the read)", NetstatLine(s)+" inode "+strconv.FormatUint(s.Inode, 10), s.Proto)
		}
	}
	for _, s := range stable {
		if !shown[memKey(s)] {
			fail("%s (sock %#x, inode %d) is in the kernel's %s hash but hidden from /proc/net/%s", memLine(s), s.Addr, s.Inode, s.Table, s.Proto)
		}
	}
	return fmt.Sprintf("socket tables in memory: %d /proc/net lines checked, %d sockets present before and after checked, %d changed during the operation (not compared), %d unix sockets not compared", lines, len(stable), changed, unix)
}

// procKey and memKey name a socket the same way from both sides.
func procKey(s Socket) string {
	return fmt.Sprintf("%s %s %s %s %d", s.Proto, s.Local, s.Remote, s.State, s.Inode)
}

func memKey(s linux.Socket) string {
	return fmt.Sprintf("%s %s %s %s %d", s.Proto, addrString(s.Local), addrString(s.Remote), s.StateName(), s.Inode)
}

func memLine(s linux.Socket) string {
	return NetstatLine(Socket{Proto: s.Proto, Local: addrString(s.Local), Remote: addrString(s.Remote), State: s.StateName()})
}

// addrString writes an address as hexAddr does for /proc/net.
func addrString(a netip.AddrPort) string {
	ip := a.Addr()
	port := strconv.FormatUint(uint64(a.Port()), 10)
	if ip.Is4() {
		return ip.String() + ":" + port
	}
	b := ip.As16()
	g := make([]string, 8)
	for i := range g {
		g[i] = strconv.FormatUint(uint64(b[2*i])<<8|uint64(b[2*i+1]), 16)
	}
	return compressIPv6(g) + ":" + port
}

// crossDcache checks the operation's answer against the dentry cache
// (the rule above); it returns what it compared.
func crossDcache(ctx context.Context, k *linux.Kernel, op Op, res *Result, before *memView, fail func(string, ...any)) (note string, compared bool) {
	p := path.Clean(op.Path)
	d, err := k.LookupCached(ctx, dummyTask(res), p)
	if errors.Is(err, linux.ErrNotCached) || errors.Is(err, linux.ErrSymlinkOnPath) {
		return fmt.Sprintf("dentry cache: nothing to compare (%v)", err), false
	}
	if err != nil {
		fail("dentry cache: %v", err)
		return "", true
	}
	if d.Inode == nil {
		fail("dentry cache: %s is a negative dentry (no such file), but the kernel's %s succeeded", p, op.Kind)
		return "", true
	}
	in := d.Inode
	switch op.Kind {
	case "stat":
		if res.Stat != nil {
			cmpStat(p, *res.Stat, in, fail)
		}
		return "dentry cache: " + p + " cached, its inode compared", true
	case "cat":
		if in.Mode&0o170000 != 0o100000 {
			fail("dentry cache: %s is not a regular file (mode %#o), but the kernel read it", p, in.Mode)
		} else if in.Size == 0 && res.Size > 0 {
			return "dentry cache: " + p + " has size 0 in its inode (a pseudo file?): size not compared", false
		} else if in.Size != res.Size {
			fail("dentry cache: %s: the kernel gave %d bytes, its cached inode %d has size %d", p, res.Size, in.Ino, in.Size)
		}
		return "dentry cache: " + p + " cached, its size compared", true
	}
	// ls
	if !d.IsDir() {
		fail("dentry cache: %s is not a directory (mode %#o), but the kernel listed it", p, in.Mode)
		return "", true
	}
	kids, err := k.CachedChildren(ctx, d)
	if err != nil {
		fail("dentry cache: %v", err)
		return "", true
	}
	listed := map[string]Entry{}
	for _, e := range res.Entries {
		listed[e.Name] = e
	}
	if dot, ok := listed["."]; ok && dot.Ino != in.Ino {
		fail("dentry cache: %s: the kernel lists \".\" as inode %d, the cached directory is inode %d", p, dot.Ino, in.Ino)
	}
	pos, neg, changed := 0, 0, 0
	for _, c := range kids {
		full := path.Join(p, c.Name)
		e, ok := listed[c.Name]
		// a dentry cached (or made negative) during the operation may
		// disagree with a listing taken before: only one that was the
		// same before and after is held to it
		stable := before == nil || before.kids == nil || before.kids[c.Addr] == dentryKey(c)
		agrees := (c.Inode == nil && !ok) || (c.Inode != nil && ok && e.Ino == c.Inode.Ino)
		if !agrees && !stable {
			changed++
			continue
		}
		switch {
		case c.Inode == nil && ok:
			fail("dentry cache: %s is a negative dentry (no such file), but getdents64 listed it as inode %d", full, e.Ino)
		case c.Inode == nil:
			neg++
		case !ok:
			fail("dentry cache: %s (inode %d) is cached, but the kernel's getdents64 hid it", full, c.Inode.Ino)
		case e.Ino != c.Inode.Ino:
			fail("dentry cache: %s: getdents64 says inode %d, the cached dentry's inode is %d", full, e.Ino, c.Inode.Ino)
		default:
			pos++
			if e.Stat != nil {
				cmpStat(full, *e.Stat, c.Inode, fail)
			}
		}
	}
	unchecked := 0
	for n := range listed {
		if n != "." && n != ".." && !slices.ContainsFunc(kids, func(c linux.Dentry) bool { return c.Name == n }) {
			unchecked++
		}
	}
	return fmt.Sprintf("dentry cache: %d cached names of %s listed alike, %d negative dentries not listed, %d listed names not cached (unchecked), %d dentries changed during the operation (not compared)", pos, p, neg, unchecked, changed), true
}

// cmpStat compares a stat answer with a cached inode.
func cmpStat(p string, st Stat, in *linux.Inode, fail func(string, ...any)) {
	if st.Ino != in.Ino || st.Mode != in.Mode || st.Size != in.Size || st.Nlink != uint64(in.Nlink) || st.UID != in.UID || st.GID != in.GID {
		fail("dentry cache: stat of %s: the kernel says inode %d mode %#o size %d links %d uid %d gid %d; the cached inode %d %#o %d %d %d %d",
			p, st.Ino, st.Mode, st.Size, st.Nlink, st.UID, st.GID, in.Ino, in.Mode, in.Size, in.Nlink, in.UID, in.GID)
	}
}

// sortedReasons keeps a verdict's reasons in a stable order: the
// disagreements first (in the order found), then the views' summaries.
func sortedReasons(fails, notes []string) []string {
	out := append([]string(nil), fails...)
	sort.Strings(notes)
	return append(out, notes...)
}
