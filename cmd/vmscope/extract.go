package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/output"
)

func newExtractCmd() *cobra.Command {
	var jobs int
	c := &cobra.Command{
		Use:   "extract IMAGE [PATH] DIR",
		Short: "Copy guest files out of the image into DIR (like debugfs rdump / virt-copy-out)",
		Long: `Copy the tree at PATH (default: the root of every filesystem, each into DIR/p1, DIR/p2...)
into DIR: regular files with their content (holes stay holes), directories, symlinks;
permissions and modification times are kept, owners when run as root. Special files
(devices, FIFOs, sockets) are not created. The image is only read.

Every file system operation goes through a handle on DIR that cannot leave it
(os.Root): a guest symlink is created as it is, never followed out of DIR. A guest
name that cannot be a file name (it holds '/' or NUL, is empty, or is "." or ".."
outside its slot) is reported as a problem and written under its escaped form
(as ls -b shows it: "lnk/evil" becomes lnk\057evil, ".." becomes \056\056); the
exit status is then 2.`,
		Args: rangeArgs(2, 3),
		RunE: func(c *cobra.Command, args []string) error {
			return runExtract(c.Context(), args[0], args[1:len(args)-1], args[len(args)-1], jobs, c.ErrOrStderr())
		},
	}
	c.Flags().IntVar(&jobs, "jobs", 4, "files copied in parallel")
	return c
}

// runExtract copies the tree at paths[0] (every filesystem's root when
// paths is empty) of image into dest with jobs files in parallel; problems
// go to errOut and the copy goes on.
func runExtract(ctx context.Context, image string, paths []string, dest string, jobs int, errOut io.Writer) error {
	im, d, err := openDisk(image)
	if err != nil {
		return err
	}
	defer im.Close()
	type target struct {
		v    *fsparse.Volume
		name string
		sub  string // folder of the volume under DIR, "" for DIR itself
	}
	var targets []target
	if len(paths) == 1 {
		v, name, err := d.Resolve(paths[0])
		if err != nil {
			return err
		}
		targets = append(targets, target{v, name, ""})
	} else {
		for _, v := range d.Volumes {
			sub := ""
			if len(d.Volumes) > 1 {
				sub = v.ID
			}
			targets = append(targets, target{v, ".", sub})
		}
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return err
	}
	defer root.Close()
	x := &extractor{jobs: max(jobs, 1), stderr: errOut}
	if len(paths) == 0 {
		// Every filesystem: what was left out (an encrypted volume, an
		// unsupported LV, a damaged partition) is said, as ls says it.
		for _, p := range d.Problems {
			x.probs.Add(p)
			fmt.Fprintf(errOut, "vmscope: %v\n", p)
		}
	}
	for _, t := range targets {
		r := root
		if t.sub != "" {
			if err := root.Mkdir(t.sub, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if r, err = root.OpenRoot(t.sub); err != nil {
				return err
			}
		}
		err := x.volume(ctx, t.v, t.name, r)
		if r != root {
			r.Close()
		}
		if err != nil {
			return err
		}
	}
	return x.probs.Err()
}

type extractor struct {
	jobs   int
	stderr io.Writer
	mu     sync.Mutex
	probs  output.Counter
}

func (x *extractor) fail(v *fsparse.Volume, e fsparse.Entry, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	msg := fmt.Sprintf("%s:%s: %v", v.ID, displayPath(e), err)
	x.probs.Add(msg)
	fmt.Fprintf(x.stderr, "vmscope: %s\n", msg)
}

// volume copies the tree at name on v into root. Names under root are the
// entries' paths relative to the start: every element of them is a valid
// file name (fsparse escapes the others), and root confines every
// operation to its directory whatever they hold.
func (x *extractor) volume(ctx context.Context, v *fsparse.Volume, name string, root *os.Root) error {
	start, err := v.Lstat(name)
	if err != nil {
		return err
	}
	base := start.Path
	local := func(p string) string {
		if start.Type != "dir" {
			return path.Base(p)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, base), "/")
		if rel == "" {
			return "."
		}
		return rel
	}
	type job struct {
		e   fsparse.Entry
		dst string
	}
	work := make(chan job, 64)
	var wg sync.WaitGroup
	var dirs []fsparse.Entry // the directories this run created, in walk order
	for i := 0; i < x.jobs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for j := range work {
				if err := x.copyFile(v, root, j.e, j.dst, buf); err != nil {
					x.fail(v, j.e, err)
				}
			}
		}()
	}
	werr := v.Walk(ctx, name, func(e fsparse.Entry, err error) error {
		if err != nil {
			x.fail(v, e, err)
			return nil
		}
		dst := local(e.Path)
		if e.Problem != nil {
			x.fail(v, e, fmt.Errorf("%v (written as %s)", *e.Problem, dst))
		}
		switch e.Type {
		case "dir":
			if dst != "." {
				if err := root.Mkdir(dst, 0o700); err != nil {
					// Not ours (a file or link of the same name came
					// first): nothing goes under it.
					x.fail(v, e, err)
					return fs.SkipDir
				}
			}
			dirs = append(dirs, e)
		case "symlink":
			if err := root.Symlink(e.Target, dst); err != nil {
				x.fail(v, e, err)
			} else {
				root.Lchown(dst, int(e.Uid), int(e.Gid))
			}
		case "file":
			work <- job{e, dst}
		}
		return nil
	})
	close(work)
	wg.Wait()
	// Directory modes and times last, deepest first, once their content is
	// in. Each was created by this run, so none is a symlink.
	for i := len(dirs) - 1; i >= 0; i-- {
		e := dirs[i]
		dst := local(e.Path)
		root.Lchown(dst, int(e.Uid), int(e.Gid))
		root.Chmod(dst, e.Mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
		root.Chtimes(dst, e.Atime, e.Mtime)
	}
	return werr
}

// copyFile writes the file's content into a new file dst under root,
// skipping all-zero blocks so holes stay holes, then sets its mode, owner
// and times.
func (x *extractor) copyFile(v *fsparse.Volume, root *os.Root, e fsparse.Entry, dst string, buf []byte) error {
	var src fsparse.File
	var err error
	if e.Ino != 0 && e.Stream == "" { // a stream (NTFS "file:stream") opens by path
		src, err = v.OpenInode(e.Ino)
	} else {
		src, err = v.Open(strings.TrimPrefix(e.Path, "/"))
	}
	if err != nil {
		return err
	}
	out, err := root.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	size := src.Size()
	for off := int64(0); off < size; {
		n := int(min(int64(len(buf)), size-off))
		if m, err := src.ReadAt(buf[:n], off); m < n {
			out.Close()
			return errors.Join(fmt.Errorf("read at %d", off), err)
		}
		// All-zero runs of 64 KiB are left as holes.
		for i := 0; i < n; i += 64 << 10 {
			chunk := buf[i:min(i+64<<10, n)]
			if allZero(chunk) {
				continue
			}
			if _, err := out.WriteAt(chunk, off+int64(i)); err != nil {
				out.Close()
				return err
			}
		}
		off += int64(n)
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	// Owner and mode through the open file, times by name: the file was
	// created by this call (O_EXCL) and nothing replaces it.
	out.Chown(int(e.Uid), int(e.Gid))
	out.Chmod(e.Mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky))
	if err := out.Close(); err != nil {
		return err
	}
	root.Chtimes(dst, e.Atime, e.Mtime)
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
