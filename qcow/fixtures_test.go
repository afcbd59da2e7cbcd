package qcow

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// Fixtures are built once per package run with qemu-img and qemu-io into a
// temporary folder removed by TestMain.
var (
	fixOnce sync.Once
	fixDir  string
	fixErr  string
	fixDirs []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range fixDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qio runs qemu-io commands on a file.
func qio(t testing.TB, format, file string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	run(t, "qemu-io", append(args, file)...)
}

// goodImages are the fixtures that must read exactly as qemu-img convert.
var goodImages = []string{
	"raw.img", "v3.qcow2", "v2.qcow2", "zlib.qcow2", "zstd.qcow2", "small4k.qcow2",
	"chain/base/base.qcow2", "chain/mid.qcow2", "chain/top/top.qcow2",
	"ovraw.qcow2", "extl2.qcow2", "bitmaps.qcow2", "grow.qcow2", "dirty.qcow2",
}

func fixtures(t testing.TB) string {
	t.Helper()
	qemuImg := fixture.Tool(t, "qemu-img")
	fixture.Tool(t, "qemu-io")
	fixOnce.Do(func() {
		d, err := os.MkdirTemp("", "qcow-fixtures-")
		if err != nil {
			fixErr = err.Error()
			return
		}
		fixDirs = append(fixDirs, d)
		buildFixtures(t, qemuImg, d)
		fixDir = d
	})
	if fixDir == "" {
		t.Fatalf("fixtures: build failed earlier %s", fixErr)
	}
	return fixDir
}

func buildFixtures(t testing.TB, qemuImg, d string) {
	p := func(n string) string { return filepath.Join(d, n) }
	mk := func(args ...string) { run(t, qemuImg, args...) }
	const size = "24M"

	mk("create", "-f", "raw", p("raw.img"), size)
	qio(t, "raw", p("raw.img"),
		"write -P 0xab 1M 64k", "write -P 0x11 3M 3M", "write -P 0x22 8388000 70000",
		"write -P 0x5a 23M 1M")
	mk("convert", "-O", "qcow2", p("raw.img"), p("v3.qcow2"))
	mk("convert", "-O", "qcow2", "-o", "compat=0.10", p("raw.img"), p("v2.qcow2"))
	mk("convert", "-O", "qcow2", "-c", p("raw.img"), p("zlib.qcow2"))
	mk("convert", "-O", "qcow2", "-c", "-o", "compression_type=zstd", p("raw.img"), p("zstd.qcow2"))
	mk("convert", "-O", "qcow2", "-o", "cluster_size=4k", p("raw.img"), p("small4k.qcow2"))

	// A three-layer chain: mid -> base by a relative path with a folder,
	// top -> mid by an absolute path; mid has another cluster size; top is
	// larger than the layers below.
	os.MkdirAll(p("chain/base"), 0o755)
	os.MkdirAll(p("chain/top"), 0o755)
	mk("create", "-f", "qcow2", p("chain/base/base.qcow2"), "16M")
	qio(t, "qcow2", p("chain/base/base.qcow2"),
		"write -P 0x01 0 4M", "write -P 0x02 6M 2M", "write -P 0x03 12M 64k")
	run(t, "sh", "-c", "cd "+p("chain")+" && "+qemuImg+" create -f qcow2 -o cluster_size=16k -b base/base.qcow2 -F qcow2 mid.qcow2")
	qio(t, "qcow2", p("chain/mid.qcow2"),
		"write -P 0x10 1M 100k", "write -z 2M 512k", "discard 6M 1M", "write -P 0x11 15M 1M")
	mk("create", "-f", "qcow2", "-b", p("chain/mid.qcow2"), "-F", "qcow2", p("chain/top/top.qcow2"), "20M")
	qio(t, "qcow2", p("chain/top/top.qcow2"),
		"write -P 0x20 1M 4k", "write -P 0x21 2M 64k", "write -z 6M 64k", "discard 0 64k",
		"write -P 0x22 19M 1M", "write -z 12M 128k")

	// A qcow2 overlay on a raw base.
	mk("create", "-f", "qcow2", "-b", p("raw.img"), "-F", "raw", p("ovraw.qcow2"))
	qio(t, "qcow2", p("ovraw.qcow2"), "write -P 0x33 1M 4k", "write -z 3M 1M", "discard 5M 64k")

	// Extended L2 entries (subclusters) over a backing file.
	mk("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k", "-b", p("v3.qcow2"), "-F", "qcow2", p("extl2.qcow2"))
	qio(t, "qcow2", p("extl2.qcow2"), "write -P 0x44 3M 4k", "write -z 1M 8k", "write -P 0x45 10M 300k")

	// Persistent bitmaps.
	mk("convert", "-O", "qcow2", p("raw.img"), p("bitmaps.qcow2"))
	mk("bitmap", "--add", "-g", "64k", p("bitmaps.qcow2"), "b0")
	mk("bitmap", "--add", "-g", "1M", "--disable", p("bitmaps.qcow2"), "cold")

	// An overlay larger than its base.
	mk("create", "-f", "qcow2", "-b", p("v2.qcow2"), "-F", "qcow2", p("grow.qcow2"), "40M")
	qio(t, "qcow2", p("grow.qcow2"), "write -P 0x66 30M 64k")

	// The dirty bit set (lazy refcounts, killed writer emulated by patching).
	mk("convert", "-O", "qcow2", p("raw.img"), p("dirty.qcow2"))
	patchU64(t, p("dirty.qcow2"), 72, 1)

	// Bad images.
	mk("create", "-f", "qcow2", p("loop-a.qcow2"), "1M")
	mk("create", "-f", "qcow2", p("loop-b.qcow2"), "1M")
	mk("rebase", "-u", "-b", "loop-b.qcow2", "-F", "qcow2", p("loop-a.qcow2"))
	mk("rebase", "-u", "-b", "loop-a.qcow2", "-F", "qcow2", p("loop-b.qcow2"))
	mk("create", "-f", "qcow2", p("loop-self.qcow2"), "1M")
	mk("rebase", "-u", "-b", "loop-self.qcow2", "-F", "qcow2", p("loop-self.qcow2"))

	garbage := make([]byte, 256<<10)
	for i := range garbage {
		garbage[i] = byte(i*7 + i>>8)
	}
	os.WriteFile(p("garbage.bin"), garbage, 0o644)
	copy(garbage, "QFI\xfb\x00\x00\x00\x03")
	os.WriteFile(p("garbage-magic.bin"), garbage, 0o644)
	for _, c := range []struct{ name, back string }{
		{"on-garbage.qcow2", "garbage.bin"},
		{"on-garbage-magic.qcow2", "garbage-magic.bin"},
		{"on-missing.qcow2", "no-such-file.qcow2"},
	} {
		mk("create", "-f", "qcow2", p(c.name), "1M")
		mk("rebase", "-u", "-b", c.back, "-F", "qcow2", p(c.name))
	}

	v3, err := os.ReadFile(p("v3.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p("trunc-half.qcow2"), v3[:len(v3)/2], 0o644)
	os.WriteFile(p("trunc-header.qcow2"), v3[:100], 0o644)
	os.WriteFile(p("trunc-l1.qcow2"), v3[:binary.BigEndian.Uint64(v3[40:])+4], 0o644)
	l1huge := append([]byte(nil), v3...)
	binary.BigEndian.PutUint32(l1huge[36:], 0xffffffff)
	os.WriteFile(p("l1huge.qcow2"), l1huge, 0o644)

	// Formats refused.
	mk("create", "-f", "qcow", p("v1.qcow"), "1M")
	mk("create", "-f", "vmdk", p("disk.vmdk"), "1M")
	mk("create", "-f", "vhdx", p("disk.vhdx"), "1M")
	mk("create", "-f", "vdi", p("disk.vdi"), "1M")
	mk("create", "-f", "vpc", p("disk.vhd"), "1M")
	mk("create", "-f", "vpc", "-o", "subformat=fixed", p("fixed.vhd"), "1M")
	// QEMU times its PBKDF on the thread's CPU clock to pick an iteration
	// count, and gives up ("Unable to get accurate CPU usage") when the
	// clock did not move: tried again, as a person would
	luks := []string{"create", "--object", "secret,id=sec0,data=123456", "-f", "qcow2",
		"-o", "encrypt.format=luks,encrypt.key-secret=sec0", p("luks.qcow2"), "1M"}
	for try := 1; ; try++ {
		out, err := exec.Command(qemuImg, luks...).CombinedOutput()
		if err == nil {
			break
		}
		if try == 5 || !strings.Contains(string(out), "Unable to get accurate CPU usage") {
			t.Fatalf("%s %s: %v\n%s", qemuImg, strings.Join(luks, " "), err, out)
		}
	}
}

func patchU64(t testing.TB, path string, off int64, v uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// qemuMap is the set of guest ranges qemu-img map reports at depth 0 with
// present true: what the file holds itself.
func qemuMap(t testing.TB, path string) rangeset.Set {
	t.Helper()
	out := run(t, "qemu-img", "map", "--output=json", path)
	var ents []struct {
		Start   int64 `json:"start"`
		Length  int64 `json:"length"`
		Depth   int   `json:"depth"`
		Present *bool `json:"present"`
	}
	if err := json.Unmarshal([]byte(out), &ents); err != nil {
		t.Fatalf("qemu-img map %s: %v\n%s", path, err, out)
	}
	var s rangeset.Set
	for _, e := range ents {
		if e.Present == nil {
			t.Fatalf("qemu-img map %s: no present field", path)
		}
		if e.Depth == 0 && *e.Present {
			s.Add(e.Start, e.Start+e.Length)
		}
	}
	return s
}
