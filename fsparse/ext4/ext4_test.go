package ext4

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
)

func openImage(t testing.TB, path string) *FS {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fh.Close() })
	st, err := fh.Stat()
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(fh, st.Size())
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	return f
}

// forEachVariant runs fn as a parallel subtest per image variant.
func forEachVariant(t *testing.T, fn func(t *testing.T, v string, img string, f *FS, src string)) {
	src, imgs := testImages(t)
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			img := imgs[v.name]
			fn(t, v.name, img, openImage(t, img), src)
		})
	}
}

func TestSuperblockVsDumpe2fs(t *testing.T) {
	dumpe2fs := tool(t, "dumpe2fs")
	blkid := tool(t, "blkid")
	forEachVariant(t, func(t *testing.T, v, img string, f *FS, _ string) {
		out, err := exec.Command(dumpe2fs, "-h", img).Output()
		if err != nil {
			t.Fatal(err)
		}
		kv := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if k, val, ok := strings.Cut(l, ":"); ok {
				kv[k] = strings.TrimSpace(val)
			}
		}
		sb := f.Super()
		check := func(key string, got any) {
			t.Helper()
			if want := kv[key]; fmt.Sprint(got) != want {
				t.Errorf("%s = %v, dumpe2fs says %q", key, got, want)
			}
		}
		check("Filesystem features", strings.Join(sb.Features(), " "))
		check("Block size", sb.BlockSize)
		check("Inode size", sb.InodeSize)
		check("Inode count", sb.InodesCount)
		check("Block count", sb.BlocksCount)
		check("Free blocks", sb.FreeBlocks)
		check("Free inodes", sb.FreeInodes)
		check("Blocks per group", sb.BlocksPerGroup)
		check("Inodes per group", sb.InodesPerGroup)
		check("Filesystem UUID", sb.UUIDString())
		check("Filesystem volume name", sb.Label)
		check("First inode", sb.FirstIno)
		out, err = exec.Command(blkid, "-p", "-o", "value", "-s", "TYPE", img).Output()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := sb.Kind(), strings.TrimSpace(string(out)); got != want {
			t.Errorf("Kind = %q, blkid says %q", got, want)
		}
		if sb.MkfsTime.IsZero() || sb.Wtime.IsZero() {
			t.Errorf("times not decoded: mkfs %v wtime %v", sb.MkfsTime, sb.Wtime)
		}
	})
}

// TestTreeConformance compares every file of every variant with the source
// tree: content, type, mode, owner, size, mtime, links, symlink targets and
// directory listings.
func TestTreeConformance(t *testing.T) {
	forEachVariant(t, func(t *testing.T, v, img string, f *FS, src string) {
		nsec := f.Super().InodeSize > 128
		res := &resolver{f: f, dirs: map[uint32]map[string]uint32{}}
		n := 0
		err := filepath.Walk(src, func(p string, st os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			rel = filepath.ToSlash(rel)
			ino, err := res.lookup(rel)
			if err != nil {
				t.Errorf("lookup(%q): %v", rel, err)
				return nil
			}
			if !strings.HasPrefix(rel, "big/") {
				if ino2, err := f.Lookup(rel); err != nil || ino2 != ino {
					t.Errorf("Lookup(%q) = %d, %v; want %d", rel, ino2, err, ino)
				}
			}
			n++
			in, err := f.Inode(ino)
			if err != nil {
				t.Errorf("Inode(%d) %q: %v", ino, rel, err)
				return nil
			}
			sys := st.Sys().(*syscall.Stat_t)
			if rel != "." {
				if in.FileMode() != st.Mode() {
					t.Errorf("%q: mode %v, source %v", rel, in.FileMode(), st.Mode())
				}
				if in.Uid != sys.Uid || in.Gid != sys.Gid {
					t.Errorf("%q: owner %d:%d, source %d:%d", rel, in.Uid, in.Gid, sys.Uid, sys.Gid)
				}
				// mke2fs -d keeps whole seconds (nanoseconds are checked
				// against debugfs and in TestFeaturesExercised).
				mt := st.ModTime().Truncate(1e9)
				if !in.Mtime.Truncate(1e9).Equal(mt) && !st.IsDir() && rel != "main/odd/owned" {
					t.Errorf("%q: mtime %v, source %v", rel, in.Mtime, mt)
				}
			}
			if !st.IsDir() && uint64(in.Links) != uint64(sys.Nlink) {
				t.Errorf("%q: links %d, source %d", rel, in.Links, sys.Nlink)
			}
			if nsec != in.HasCrtime && f.Super().InodeSize >= 256 {
				t.Errorf("%q: HasCrtime %v", rel, in.HasCrtime)
			}
			switch {
			case st.Mode().IsRegular():
				// mke2fs -d with inline_data drops a trailing hole from
				// the size (debugfs agrees with us, see the debugfs test).
				if v == "ext4-inline" && rel == "extra/sparse_far" {
					break
				}
				if in.Size != uint64(st.Size()) {
					t.Errorf("%q: size %d, source %d", rel, in.Size, st.Size())
				}
				want, _ := os.ReadFile(p)
				fl, err := f.OpenInode(ino)
				if err != nil {
					t.Errorf("OpenInode %q: %v", rel, err)
					return nil
				}
				got, err := io.ReadAll(fl)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%q: content differs (len %d vs %d), err %v", rel, len(got), len(want), err)
				}
			case st.Mode()&fs.ModeSymlink != 0:
				want, _ := os.Readlink(p)
				got, err := f.Readlink(rel)
				if err != nil || got != want {
					t.Errorf("Readlink %q = %q, %v; want %q", rel, got, err, want)
				}
			case st.IsDir():
				ents, err := f.ReadDirInode(ino)
				if err != nil {
					t.Errorf("ReadDirInode %q: %v", rel, err)
					return nil
				}
				srcEnts, _ := os.ReadDir(p)
				var got, want []string
				for _, e := range ents {
					if rel == "." && e.Name == "lost+found" {
						continue
					}
					got = append(got, fmt.Sprintf("%s %v", e.Name, e.Type))
				}
				for _, e := range srcEnts {
					want = append(want, fmt.Sprintf("%s %v", e.Name(), e.Type()))
				}
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Errorf("dir %q: %d entries, source %d", rel, len(got), len(want))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n < bigDirEntries+300 {
			t.Errorf("only %d files compared", n)
		}
	})
}

func TestFSTest(t *testing.T) {
	forEachVariant(t, func(t *testing.T, v, img string, f *FS, src string) {
		// The non-UTF-8 name lives in weird/, outside main: io/fs paths
		// must be UTF-8, so fstest would reject it.
		sub, err := fs.Sub(f, "main")
		if err != nil {
			t.Fatal(err)
		}
		if err := fstest.TestFS(sub, "big", "d0/sub0/f000.dat", "odd/setuid", "short_link", "long_link", "empty_dir"); err != nil {
			t.Error(err)
		}
		// Stat does not follow symlinks; Open of a symlink reads its target.
		fi, err := fs.Stat(f, "main/long_link")
		if err != nil || fi.Mode().Type() != fs.ModeSymlink {
			t.Errorf("Stat(long_link) = %v, %v", fi, err)
		}
		if _, ok := fi.Sys().(*Inode); !ok {
			t.Errorf("Sys() = %T", fi.Sys())
		}
		if _, err := f.Open("main/nope"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open(missing) = %v", err)
		}
		var pe *fs.PathError
		if _, err := f.Lookup("main/nope/x"); !errors.As(err, &pe) || !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Lookup(missing) = %v", err)
		}
		if _, err := f.Lookup("main/big/x"); !errors.Is(err, ErrNotDir) {
			t.Errorf("Lookup(file/x) = %v", err)
		}
		if ino, err := f.Lookup("weird/" + nonUTF8Name); err != nil || ino == 0 {
			t.Errorf("Lookup(non-UTF-8) = %d, %v", ino, err)
		}
	})
}

// debugfsRun runs a batch of debugfs requests and returns each one's output.
func debugfsRun(t *testing.T, img string, cmds []string) []string {
	t.Helper()
	cf := filepath.Join(t.TempDir(), "cmds")
	if err := os.WriteFile(cf, []byte(strings.Join(cmds, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool(t, "debugfs"), "-f", cf, img).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	parts := strings.Split(string(out), "debugfs: ")
	if len(parts) != len(cmds)+1 {
		t.Fatalf("debugfs: %d outputs for %d commands", len(parts)-1, len(cmds))
	}
	res := parts[1:]
	for i := range res {
		res[i] = strings.TrimPrefix(res[i], cmds[i]+"\n")
	}
	return res
}

var (
	reStatType  = regexp.MustCompile(`Mode:\s+(\d+)`)
	reStatUser  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+).*Size: (\d+)`)
	reStatLinks = regexp.MustCompile(`Links: (\d+)`)
	reStatMtime = regexp.MustCompile(`mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?`)
	reStatFlags = regexp.MustCompile(`Flags: 0x([0-9a-f]+)`)
	reMapEntry  = regexp.MustCompile(`\(([^)]*)\):(\d+)(?:-(\d+))?`)
)

// parseStatMap parses the BLOCKS:/EXTENTS: section of debugfs stat into
// coalesced extents and metadata blocks.
func parseStatMap(t *testing.T, s string) ([]Extent, []uint64) {
	i := strings.LastIndex(s, "EXTENTS:")
	if j := strings.LastIndex(s, "BLOCKS:"); j > i {
		i = j
	}
	if i < 0 {
		return nil, nil
	}
	var m blockMap
	var meta []uint64
	for _, g := range reMapEntry.FindAllStringSubmatch(s[i:], -1) {
		what := g[1]
		p0, _ := strconv.ParseUint(g[2], 10, 64)
		p1 := p0
		if g[3] != "" {
			p1, _ = strconv.ParseUint(g[3], 10, 64)
		}
		if what == "IND" || what == "DIND" || what == "TIND" || strings.HasPrefix(what, "ETB") {
			meta = append(meta, p0)
			continue
		}
		unwritten := strings.HasSuffix(what, "[u]")
		what = strings.TrimSuffix(what, "[u]")
		l0s, l1s, _ := strings.Cut(what, "-")
		l0, err := strconv.ParseUint(l0s, 10, 64)
		if err != nil {
			t.Fatalf("bad map entry %q", g[0])
		}
		l1 := l0
		if l1s != "" {
			l1, _ = strconv.ParseUint(l1s, 10, 64)
		}
		if l1-l0 != p1-p0 {
			t.Fatalf("bad map entry %q", g[0])
		}
		m.add(Extent{Logical: l0, Physical: p0, Len: l1 - l0 + 1, Unwritten: unwritten}, nil, 0)
	}
	return m.ext, meta
}

// TestDebugfsConformance checks stat (mode, owner, size, links, mtime with
// nanoseconds and epoch bits, flags), the block map and the metadata blocks
// of every file outside big/, and ls -l of every directory, against debugfs.
func TestDebugfsConformance(t *testing.T) {
	forEachVariant(t, func(t *testing.T, v, img string, f *FS, src string) {
		var paths []string
		var inos []uint32
		var dirs []string
		filepath.Walk(src, func(p string, st os.FileInfo, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(src, p)
			if rel == "big" || strings.HasPrefix(rel, "big/") || strings.Contains(rel, "\xff") {
				if rel == "big" {
					dirs = append(dirs, rel)
					return filepath.SkipDir
				}
				return nil
			}
			ino, err := f.Lookup(filepath.ToSlash(rel))
			if err != nil {
				t.Fatalf("Lookup %q: %v", rel, err)
			}
			paths = append(paths, rel)
			inos = append(inos, ino)
			if st.IsDir() {
				dirs = append(dirs, rel)
			}
			return nil
		})
		var cmds []string
		for _, ino := range inos {
			cmds = append(cmds, fmt.Sprintf("stat <%d>", ino))
		}
		for _, d := range dirs {
			cmds = append(cmds, "ls -l /"+strings.TrimPrefix(d, "."))
		}
		outs := debugfsRun(t, img, cmds)
		checked := map[string]bool{}
		for k, ino := range inos {
			s := outs[k]
			in, err := f.Inode(ino)
			if err != nil {
				t.Fatal(err)
			}
			want := func(re *regexp.Regexp, n int) string {
				m := re.FindStringSubmatch(s)
				if m == nil {
					t.Fatalf("stat <%d>: no %v in\n%s", ino, re, s)
				}
				return m[n]
			}
			mode, _ := strconv.ParseUint(want(reStatType, 1), 8, 32)
			if uint64(in.Mode&07777) != mode {
				t.Errorf("%s: mode %o, debugfs %o", paths[k], in.Mode&07777, mode)
			}
			got := fmt.Sprintf("%d %d %d %d %x", in.Uid, in.Gid, in.Size, in.Links, in.Flags)
			exp := fmt.Sprintf("%s %s %s %s %s", want(reStatUser, 1), want(reStatUser, 2), want(reStatUser, 3), want(reStatLinks, 1), want(reStatFlags, 1))
			if got != exp {
				t.Errorf("%s: uid gid size links flags %s, debugfs %s", paths[k], got, exp)
			}
			mt := reStatMtime.FindStringSubmatch(s)
			secs := in.Mtime.Unix()
			gotMt := fmt.Sprintf("%08x", uint32(secs))
			if mt[2] != "" {
				epoch := uint32((secs-int64(int32(uint32(secs))))>>32) & 3
				gotMt += fmt.Sprintf(":%08x", uint32(in.Mtime.Nanosecond())<<2|epoch)
			} else if in.Mtime.Nanosecond() != 0 {
				t.Errorf("%s: nanoseconds without extra fields", paths[k])
			}
			if wantMt := strings.TrimPrefix(strings.TrimPrefix(mt[0], "mtime: "), "0x"); gotMt != wantMt {
				t.Errorf("%s: mtime %s, debugfs %s", paths[k], gotMt, mt[0])
			}
			wantExt, wantMeta := parseStatMap(t, s)
			gotExt, err := f.Extents(ino)
			if err != nil {
				t.Errorf("%s: Extents: %v", paths[k], err)
				continue
			}
			if !slices.Equal(gotExt, wantExt) {
				t.Errorf("%s (inode %d): extents\n got %v\nwant %v", paths[k], ino, trunc(gotExt), trunc(wantExt))
			}
			gotMeta, _ := f.MetadataBlocks(ino)
			slices.Sort(gotMeta)
			slices.Sort(wantMeta)
			if !slices.Equal(gotMeta, wantMeta) {
				t.Errorf("%s: metadata blocks %v, debugfs %v", paths[k], trunc(gotMeta), trunc(wantMeta))
			}
			checked[filepath.Base(paths[k])] = true
			if filepath.Base(paths[k]) == "sparse" {
				if len(gotExt) < sparseRegions && f.Super().BlockSize < 65536 {
					t.Errorf("sparse: only %d extents", len(gotExt))
				}
				if len(gotMeta) == 0 && f.Super().BlockSize < 65536 {
					t.Errorf("sparse: no metadata blocks")
				}
				if v == "ext4-1k" || v == "ext4-metabg" {
					if in.block[6] < 2 { // eh_depth
						t.Errorf("sparse: extent depth %d, want ≥ 2", in.block[6])
					}
				}
			}
			if v == "ext3" && filepath.Base(paths[k]) == "sparse_far" && !strings.Contains(s, "(TIND)") {
				t.Errorf("sparse_far on ext3 has no triple-indirect block")
			}
		}
		// ls -l: inode, mode and name of each entry.
		reLs := regexp.MustCompile(`^\s*(\d+)\s+(\d+)\s+\((\d+)\)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+(.*)$`)
		for k, d := range dirs {
			s := outs[len(inos)+k]
			var want []string
			for _, l := range strings.Split(s, "\n") {
				m := reLs.FindStringSubmatch(strings.TrimRight(l, " "))
				if m == nil || m[7] == "." || m[7] == ".." || m[1] == "0" {
					continue
				}
				want = append(want, fmt.Sprintf("%s %s %s", m[1], m[2], m[7]))
			}
			ino, _ := f.Lookup(filepath.ToSlash(d))
			ents, err := f.ReadDirInode(ino)
			if err != nil {
				t.Fatalf("ReadDirInode %s: %v", d, err)
			}
			var got []string
			for _, e := range ents {
				in, err := f.Inode(e.Ino)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprintf("%d %o %s", e.Ino, in.Mode, debugfsEscape(e.Name)))
			}
			if !slices.Equal(got, want) {
				t.Errorf("ls -l %s: %d entries, debugfs %d; first got %q want %q", d, len(got), len(want), first(got), first(want))
			}
		}
		for _, name := range []string{"sparse", "sparse_far", "big", "big3m", "long_link"} {
			if !checked[name] {
				t.Errorf("%s not checked", name)
			}
		}
	})
}

// resolver looks paths up through cached ReadDirInode listings, so the
// 3000-entry directory is read once, not once per file.
type resolver struct {
	f    *FS
	dirs map[uint32]map[string]uint32
}

func (r *resolver) lookup(p string) (uint32, error) {
	ino := uint32(rootIno)
	if p == "." {
		return ino, nil
	}
	for _, elem := range strings.Split(p, "/") {
		m, ok := r.dirs[ino]
		if !ok {
			ents, err := r.f.ReadDirInode(ino)
			if err != nil {
				return 0, err
			}
			m = map[string]uint32{}
			for _, e := range ents {
				m[e.Name] = e.Ino
			}
			r.dirs[ino] = m
		}
		if ino = m[elem]; ino == 0 {
			return 0, fs.ErrNotExist
		}
	}
	return ino, nil
}

// debugfsEscape escapes a name the way debugfs ls prints it.
func debugfsEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			fmt.Fprintf(&b, "\\x%02x", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func first(s []string) []string { return s[:min(3, len(s))] }

func trunc[T any](s []T) string {
	if len(s) > 6 {
		return fmt.Sprintf("%v…(%d)", s[:6], len(s))
	}
	return fmt.Sprint(s)
}

// TestHtreeAndInline checks the features the variants should exercise.
func TestFeaturesExercised(t *testing.T) {
	forEachVariant(t, func(t *testing.T, v, img string, f *FS, src string) {
		bigIno, err := f.Lookup("big")
		if err != nil {
			t.Fatal(err)
		}
		in, _ := f.Inode(bigIno)
		if f.Super().FeatureCompat&0x20 != 0 && in.Flags&flagIndex == 0 {
			t.Errorf("big/ is not an htree directory (flags %#x)", in.Flags)
		}
		if ino, err := f.Lookup("main/odd/owned"); err != nil {
			t.Fatal(err)
		} else if in, _ := f.Inode(ino); f.Super().InodeSize > 128 && (in.Mtime.Nanosecond() != 123456789 || in.Mtime.Year() < 2150) {
			t.Errorf("owned: mtime %v, want nanoseconds 123456789 and the epoch bit", in.Mtime)
		}
		if v == "ext4-inline" {
			n := 0
			for _, p := range []string{"main/d0/sub0/f000.dat", "main/empty_dir", "main/long_link", "weird"} {
				ino, err := f.Lookup(p)
				if err != nil {
					t.Fatal(err)
				}
				if ok, _ := f.InlineData(ino); ok {
					n++
				}
			}
			if n < 3 {
				t.Errorf("only %d of 4 inline candidates are inline", n)
			}
		}
		if v == "ext2" || v == "ext3" || v == "ext4-noextent" {
			ino, _ := f.Lookup("main/big")
			if in, _ := f.Inode(ino); in.IsExtentMapped() {
				t.Errorf("main/big is extent-mapped on %s", v)
			}
		}
	})
}

// TestConcurrentReads reads all of main/ from many goroutines at once.
func TestConcurrentReads(t *testing.T) {
	src, imgs := testImages(t)
	f := openImage(t, imgs["ext4"])
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range []string{"main/big", "extra/sparse", "extra/big3m", "main/d0/sub0/f000.dat"} {
				b, err := fs.ReadFile(f, p)
				want, _ := os.ReadFile(filepath.Join(src, p))
				if err != nil || !bytes.Equal(b, want) {
					errs <- fmt.Errorf("%s: %v", p, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
