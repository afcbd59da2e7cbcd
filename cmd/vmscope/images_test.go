package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/imgtest"
)

// formatImages are the image-format fixtures (testdata/formats/build.sh),
// every one the same ext4 disk, with their format.
var formatImages = map[string]string{
	"sparse.vmdk": "vmdk", "flat.vmdk": "vmdk", "stream.vmdk": "vmdk",
	"split-sparse.vmdk": "vmdk", "split-flat.vmdk": "vmdk", "multi.vmdk": "vmdk", "delta.vmdk": "vmdk",
	"dynamic.vhd": "vpc", "fixed.vhd": "vpc", "dynamic.vhdx": "vhdx", "fixed.vhdx": "vhdx",
}

// deltaWrites returns the writes the fixture script made into delta.vmdk
// (file blocks found with debugfs) and the files they touch.
func deltaWrites(t *testing.T) ([]imgtest.Write, []string) {
	t.Helper()
	b, err := os.ReadFile(imgtest.Path(t, "delta-writes.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var ws []imgtest.Write
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		off, err1 := strconv.ParseInt(f[0], 10, 64)
		n, err2 := strconv.ParseInt(f[1], 10, 64)
		if len(f) != 2 || err1 != nil || err2 != nil {
			t.Fatalf("delta-writes.txt: %q", line)
		}
		ws = append(ws, imgtest.Write{Off: off, Len: n, Fill: 0x77})
	}
	b, err = os.ReadFile(imgtest.Path(t, "delta-touched.txt"))
	if err != nil {
		t.Fatal(err)
	}
	files := strings.Fields(string(b))
	slices.Sort(files)
	return ws, files
}

// differencing writes a differencing VHD and VHDX (qemu-img cannot) over
// copies of the dynamic fixtures, holding the delta's file writes.
func differencing(t *testing.T) (vhd, vhdx string) {
	t.Helper()
	ws, _ := deltaWrites(t)
	dir := t.TempDir()
	cp := func(name string) string {
		b, err := os.ReadFile(imgtest.Path(t, name))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "parent-"+name)
		if err := os.WriteFile(p, b, 0o444); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pv := cp("dynamic.vhd")
	vhd = filepath.Join(dir, "child.vhd")
	imgtest.WriteVHDChild(t, vhd, imgtest.VHDChild{Parent: pv, Locators: map[string]string{"W2ru": filepath.Base(pv)}, Writes: ws})
	px := cp("dynamic.vhdx")
	vhdx = filepath.Join(dir, "child.vhdx")
	imgtest.WriteVHDXChild(t, vhdx, imgtest.VHDXChild{Size: 64 << 20, Linkage: imgtest.VHDXDataWriteGUID(t, px),
		Keys: map[string]string{"relative_path": filepath.Base(px)}, Writes: ws})
	return vhd, vhdx
}

// TestImageFormatsCommands: info, ls -r, cat, scan and dirty work through
// the CLI on every VMDK, VHD and VHDX fixture and on the differencing VHD
// and VHDX: the format is reported, the listing is the source tree, cat
// is byte-exact, and no image file changes.
func TestImageFormatsCommands(t *testing.T) {
	tree := imgtest.Path(t, "tree")
	var want []string
	filepath.Walk(tree, func(p string, fi os.FileInfo, err error) error {
		if rel, _ := filepath.Rel(tree, p); rel != "." {
			want = append(want, "/"+rel)
		}
		return nil
	})
	want = append(want, "/lost+found")
	slices.Sort(want)
	_, touched := deltaWrites(t)
	vhd, vhdx := differencing(t)
	images := map[string]string{vhd: "vpc", vhdx: "vhdx"}
	for name, f := range formatImages {
		images[imgtest.Path(t, name)] = f
	}
	var watched []string
	for p := range images {
		watched = append(watched, p)
	}
	watched = append(watched, imgtest.Path(t, "base.vmdk"), imgtest.Path(t, "split-flat-f001.vmdk"), imgtest.Path(t, "head.vmdk"))
	before := map[string]fileState{}
	for _, w := range watched {
		if !strings.HasPrefix(filepath.Base(w), "split-flat-f") { // 2 GiB: hashing it is bench work
			before[w] = stateOf(t, w)
		}
	}
	for p, format := range images {
		t.Run(filepath.Base(p), func(t *testing.T) {
			stdout, stderr, code := vmscope(t, "info", "--format", "json", p)
			var info struct {
				Format string `json:"format"`
			}
			if code != 0 || json.Unmarshal([]byte(stdout), &info) != nil || info.Format != format {
				t.Fatalf("info: exit %d, format %q (want %s): %s", code, info.Format, format, stderr)
			}
			stdout, stderr, code = vmscope(t, "ls", "-r", "--format", "ndjson", p)
			if code != 0 {
				t.Fatalf("ls: exit %d: %s", code, stderr)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
				var e struct {
					Path string `json:"path"`
				}
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatal(err)
				}
				got = append(got, e.Path)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("ls -r lists %v, the tree %v", got, want)
			}
			for _, f := range []string{"/data/holes.bin", "/etc/hostname", "/docs/note-40.txt"} {
				stdout, stderr, code = vmscope(t, "cat", p, f)
				src, err := os.ReadFile(filepath.Join(tree, f))
				if err != nil {
					t.Fatal(err)
				}
				if code != 0 || stdout != string(src) {
					t.Fatalf("cat %s: exit %d, %d bytes differ from the source's %d: %s", f, code, len(stdout), len(src), stderr)
				}
			}
			if _, stderr, code = vmscope(t, "scan", "--format", "json", p); code != 0 && code != 1 {
				t.Fatalf("scan: exit %d: %s", code, stderr)
			}
			if strings.HasPrefix(filepath.Base(p), "split-") {
				// 2.1 GiB: a first poll of the hash source (which reads
				// only the data ranges); comparing with the raw disk
				// would read all of it.
				if _, stderr, code = vmscope(t, "dirty", "--state", filepath.Join(t.TempDir(), "state"), p); code != 0 {
					t.Fatalf("dirty --state: exit %d: %s", code, stderr)
				}
				return
			}
			// Against the raw disk they were all made from: no change, but
			// for the deltas, whose changes are the files written.
			stdout, stderr, code = vmscope(t, "dirty", "--format", "json", "--base", imgtest.Path(t, "ext4.img"), p)
			if code != 0 {
				t.Fatalf("dirty: exit %d: %s", code, stderr)
			}
			wantChanged := []string(nil)
			if p == vhd || p == vhdx || filepath.Base(p) == "delta.vmdk" {
				wantChanged = touched
			}
			if got := changed(t, stdout); !slices.Equal(got, wantChanged) {
				t.Fatalf("dirty --base ext4.img: %v; want %v", got, wantChanged)
			}
		})
	}
	for w, st := range before {
		if after := stateOf(t, w); after != st {
			t.Errorf("%s changed", w)
		}
	}
}

// TestImageDeltasDirty: a VMDK delta (qemu-img create -b + qemu-io) and a
// differencing VHD and VHDX holding the same writes are copy-on-write
// dirty sources: `vmscope dirty` reports exactly the files the writes
// touched (debugfs bmap found their blocks when the fixture was made).
func TestImageDeltasDirty(t *testing.T) {
	_, touched := deltaWrites(t)
	vhd, vhdx := differencing(t)
	for _, p := range []string{imgtest.Path(t, "delta.vmdk"), vhd, vhdx} {
		// info shows the chain: the child, then its parent by name.
		stdout, stderr, code := vmscope(t, "info", "--format", "json", p)
		var info struct {
			Chain []struct {
				Path        string `json:"path"`
				BackingFile string `json:"backing_file"`
				FileSize    int64  `json:"file_size"`
			} `json:"chain"`
		}
		if code != 0 || json.Unmarshal([]byte(stdout), &info) != nil {
			t.Fatalf("info %s: exit %d: %s", p, code, stderr)
		}
		if st, err := os.Stat(p); err != nil || len(info.Chain) != 2 || info.Chain[0].FileSize != st.Size() || info.Chain[0].BackingFile != info.Chain[1].Path {
			t.Errorf("info %s: chain %+v", p, info.Chain)
		}
		stdout, stderr, code = vmscope(t, "dirty", "--format", "json", p)
		if code != 0 {
			t.Fatalf("dirty %s: exit %d: %s", p, code, stderr)
		}
		var doc struct {
			Source string `json:"source"`
		}
		if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
			t.Fatal(err)
		}
		if got := changed(t, stdout); doc.Source != "cow" || !slices.Equal(got, touched) {
			t.Errorf("dirty %s: source %s, changes %v; want cow, %v", filepath.Base(p), doc.Source, got, touched)
		}
	}
}

// changed returns the sorted paths of `vmscope dirty --format json`.
func changed(t *testing.T, stdout string) []string {
	t.Helper()
	var doc struct {
		Changes []struct {
			Path string `json:"path"`
		} `json:"changes"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range doc.Changes {
		got = append(got, c.Path)
	}
	slices.Sort(got)
	return got
}
