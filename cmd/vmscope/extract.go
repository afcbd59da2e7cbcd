package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/fsparse"
)

func newExtractCmd() *cobra.Command {
	var jobs int
	c := &cobra.Command{
		Use:   "extract IMAGE [PATH] DIR",
		Short: "Copy guest files out of the image into DIR (like debugfs rdump / virt-copy-out)",
		Long: `Copy the tree at PATH (default: the root of every filesystem, each into DIR/p1, DIR/p2...)
into DIR: regular files with their content (holes stay holes), directories, symlinks;
permissions and modification times are kept, owners when run as root. Special files
(devices, FIFOs, sockets) are not created. The image is only read.`,
		Args: rangeArgs(2, 3),
		RunE: func(c *cobra.Command, args []string) error {
			im, d, err := openDisk(args[0])
			if err != nil {
				return err
			}
			defer im.Close()
			dest := args[len(args)-1]
			type target struct {
				v    *fsparse.Volume
				name string
				dir  string
			}
			var targets []target
			if len(args) == 3 {
				v, name, err := d.Resolve(args[1])
				if err != nil {
					return err
				}
				targets = append(targets, target{v, name, dest})
			} else {
				for _, v := range d.Volumes {
					dir := dest
					if len(d.Volumes) > 1 {
						dir = filepath.Join(dest, v.ID)
					}
					targets = append(targets, target{v, ".", dir})
				}
			}
			x := &extractor{jobs: max(jobs, 1), stderr: c.ErrOrStderr()}
			for _, t := range targets {
				if err := x.volume(c, t.v, t.name, t.dir); err != nil {
					return err
				}
			}
			if x.failed {
				return errPartial
			}
			return nil
		},
	}
	c.Flags().IntVar(&jobs, "jobs", 4, "files copied in parallel")
	return c
}

type extractor struct {
	jobs   int
	stderr io.Writer
	mu     sync.Mutex
	failed bool
}

func (x *extractor) fail(v *fsparse.Volume, p string, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.failed = true
	fmt.Fprintf(x.stderr, "vmscope: %s:%s: %v\n", v.ID, printable(p), err)
}

func (x *extractor) volume(c *cobra.Command, v *fsparse.Volume, name, dest string) error {
	root, err := v.Lstat(name)
	if err != nil {
		return err
	}
	base := root.Path
	local := func(p string) string {
		rel := strings.TrimPrefix(strings.TrimPrefix(p, base), "/")
		if root.Type != "dir" {
			return filepath.Join(dest, filepath.Base(p))
		}
		return filepath.Join(dest, filepath.FromSlash(rel))
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return err
	}
	type job struct {
		e   fsparse.Entry
		dst string
	}
	work := make(chan job, 64)
	var wg sync.WaitGroup
	var dirs []fsparse.Entry
	for i := 0; i < x.jobs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for j := range work {
				if err := x.copyFile(v, j.e, j.dst, buf); err != nil {
					x.fail(v, j.e.Path, err)
				}
			}
		}()
	}
	werr := v.Walk(c.Context(), name, func(e fsparse.Entry, err error) error {
		if err != nil {
			x.fail(v, e.Path, err)
			return nil
		}
		dst := local(e.Path)
		switch e.Type {
		case "dir":
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, e)
		case "symlink":
			if err := os.Symlink(e.Target, dst); err != nil {
				x.fail(v, e.Path, err)
			} else {
				os.Lchown(dst, int(e.Uid), int(e.Gid))
			}
		case "file":
			work <- job{e, dst}
		}
		return nil
	})
	close(work)
	wg.Wait()
	// Directory modes and times last, deepest first, once their content is in.
	for i := len(dirs) - 1; i >= 0; i-- {
		setMeta(local(dirs[i].Path), dirs[i])
	}
	return werr
}

// copyFile writes the file's content, skipping all-zero blocks so holes
// stay holes, then sets its mode, owner and times.
func (x *extractor) copyFile(v *fsparse.Volume, e fsparse.Entry, dst string, buf []byte) error {
	var src fsparse.File
	var err error
	if e.Ino != 0 {
		src, err = v.OpenInode(e.Ino)
	} else {
		src, err = v.Open(strings.TrimPrefix(e.Path, "/"))
	}
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
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
	if err := out.Close(); err != nil {
		return err
	}
	setMeta(dst, e)
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

func setMeta(p string, e fsparse.Entry) {
	os.Lchown(p, int(e.Uid), int(e.Gid))
	os.Chmod(p, e.Mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
	os.Chtimes(p, e.Atime, e.Mtime)
}
