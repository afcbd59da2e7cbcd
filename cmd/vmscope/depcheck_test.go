package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const mod = "github.com/vmscope/vmscope/"

// The packages that write to a live guest (vmi.Controller
// implementations), and the only packages that may import them.
var (
	guestWriters = []string{mod + "vmi/qemu/control", mod + "vmi/libvmi/control"}
	// watch/denyctl: deny mode of `vmscope watch` writes one register
	// (RAX = -EACCES when a forbidden task's inode_permission returns);
	// package watch itself stays read-only and takes the vmi.Controller
	// denyctl gives it.
	guestWriterImports = []string{mod + "inject", mod + "watch/denyctl"}
)

// The read-only packages, each with whether it may link a live backend
// (a tracer). The scanners (images, filesystems, dirty tracking, YARA)
// link no live guest at all; nor do the introspection core and the
// snapshot analyses; the live analyses that only observe (cfi, watch)
// link a tracer but never a controller. Packages not written yet are
// checked once they are.
var readOnly = map[string]bool{
	"qcow": false, "disk": false, "disk/vmdk": false, "disk/vhd": false, "disk/vhdx": false, "fsparse": false, "fsparse/ext4": false, "fsparse/jbd2": false,
	"scan": false, "scan/imagescan": false, "internal/output": false, "cow": false, "dirty": false, "dirty/state": false,
	"vmi": false, "vmi/snapshot": false, "vmi/linux": false, "vmi/memtest": false,
	"cfi": true, "watch": true,
}

// TestReadOnlyPackagesDoNotLinkGuestWriters keeps the read-only analyses
// (images, filesystems, scanning, dirty tracking, snapshot introspection,
// and later integrity and file watching) from linking the packages that
// can write to a live guest's memory or registers, and the scanners and
// the snapshot analyses from linking any live backend.
func TestReadOnlyPackagesDoNotLinkGuestWriters(t *testing.T) {
	live := []string{mod + "vmi/qemu", mod + "vmi/libvmi"}
	checked := 0
	for p, mayTrace := range readOnly {
		if _, err := os.Stat(filepath.Join("..", "..", p)); err != nil {
			continue // not written yet
		}
		checked++
		for _, tags := range []string{"", "libvmi"} {
			args := []string{"list", "-deps"}
			if tags != "" {
				args = append(args, "-tags", tags)
			}
			out, err := exec.Command("go", append(args, mod+p)...).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", p, err)
			}
			deps := strings.Fields(string(out))
			if len(deps) < 2 {
				t.Fatalf("go list -deps %s listed %d packages", p, len(deps))
			}
			for _, d := range deps {
				for _, w := range guestWriters {
					if d == w {
						t.Errorf("%s links %s, which writes to live guests", p, w)
					}
				}
				for _, l := range live {
					if d == l && !mayTrace {
						t.Errorf("%s links the live backend %s", p, l)
					}
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("checked %d read-only packages", checked)
	}
}

// TestOnlyInjectImportsGuestWriters checks every package of the module:
// only system-call injection imports a Controller implementation.
func TestOnlyInjectImportsGuestWriters(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "libvmi", "-e", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		n++
		for _, imp := range f[1:] {
			for _, w := range guestWriters {
				if imp != w {
					continue
				}
				ok := false
				for _, a := range guestWriterImports {
					if f[0] == a || strings.HasPrefix(f[0], a+"/") {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s imports %s: only %v may", f[0], w, guestWriterImports)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("go list listed %d packages", n)
	}
}

// writePacket matches the GDB packets that write guest memory ('M', 'X')
// or registers ('P', 'G') as Go format strings or literals.
var writePacket = regexp.MustCompile(`^(M%|X%|P%|G%|G$)`)

// TestLiveReadersSendNoWritePackets keeps the write packets in
// vmi/qemu/control: vmi/qemu itself (the reader and tracer every live
// analysis links) holds no string that starts a memory or register write.
func TestLiveReadersSendNoWritePackets(t *testing.T) {
	dir := filepath.Join("..", "..", "vmi", "qemu")
	fset := token.NewFileSet()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	lits := 0
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			bl, ok := n.(*ast.BasicLit)
			if !ok || bl.Kind != token.STRING {
				return true
			}
			lits++
			if s, err := strconv.Unquote(bl.Value); err == nil && writePacket.MatchString(s) {
				t.Errorf("%s: %q starts a write packet; writes belong in vmi/qemu/control", fset.Position(bl.Pos()), s)
			}
			return true
		})
	}
	if lits < 50 {
		t.Fatalf("read %d string literals in %s", lits, dir)
	}
	// the control package does hold them: the pattern is not dead
	b, err := os.ReadFile(filepath.Join(dir, "control", "control.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"M%x,%x:%s"`) || !strings.Contains(string(b), `"P%x=%s"`) {
		t.Error("vmi/qemu/control no longer holds the write packets this test looks for")
	}
}
