package linux

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// buildELF compiles a tiny kernel-like program (text, rodata, data, bss,
// a local function) with gcc and adds a .BTF section with objcopy; it
// returns the ELF's path and the BTF bytes.
func buildELF(t *testing.T) (string, []byte) {
	t.Helper()
	gcc, objcopy := fixture.Tool(t, "gcc"), fixture.Tool(t, "objcopy")
	dir := t.TempDir()
	src := filepath.Join(dir, "k.c")
	os.WriteFile(src, []byte(`const char banner[] = "Linux version 0.0.0-test";
long counter = 7;
long zeroes[64];
static int helper(int x) { return x * 3; }
int start_kernel(void) { return helper((int)counter) + banner[0] + (int)zeroes[1]; }
void _start(void) { start_kernel(); for (;;) ; }
`), 0o644)
	raw := seedBTF(t)
	btfPath := filepath.Join(dir, "btf.raw")
	os.WriteFile(btfPath, raw, 0o644)
	bin, out := filepath.Join(dir, "k"), filepath.Join(dir, "vmlinux")
	for _, c := range [][]string{
		{gcc, "-O0", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-o", bin, src},
		{objcopy, "--add-section", ".BTF=" + btfPath, bin, out},
	} {
		if b, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, b)
		}
	}
	return out, raw
}

func sortedLines(b []byte) []string {
	l := strings.Split(strings.TrimSpace(string(b)), "\n")
	sort.Strings(l)
	return l
}

// TestKernelImageELF: a vmlinux ELF gives its .BTF section byte for byte
// and a System.map equal to nm's (the tool System.map is made with); one
// without symbols gives BTF only; the file is read in place, so one of
// 2 GiB (a sparse tail after its headers) is read with a few MiB.
func TestKernelImageELF(t *testing.T) {
	path, raw := buildELF(t)
	ki, err := ReadKernelImage(path)
	if err != nil {
		t.Fatal(err)
	}
	if ki.Source != "vmlinux ELF" || !bytes.Equal(ki.BTF, raw) {
		t.Errorf("source %q, BTF %q, want %q", ki.Source, ki.BTF, raw)
	}
	nm, err := exec.Command(fixture.Tool(t, "nm"), "-n", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sortedLines(ki.SystemMap), sortedLines(nm); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("System.map:\n%s\nnm:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	stripped := filepath.Join(t.TempDir(), "vmlinux.stripped")
	if b, err := exec.Command(fixture.Tool(t, "objcopy"), "--strip-all", path, stripped).CombinedOutput(); err != nil {
		t.Fatalf("objcopy --strip-all: %v\n%s", err, b)
	}
	if ki, err := ReadKernelImage(stripped); err != nil || ki.SystemMap != nil || !bytes.Equal(ki.BTF, raw) {
		t.Errorf("stripped: %v, System.map %q, BTF %q", err, ki.SystemMap, ki.BTF)
	}

	big := filepath.Join(t.TempDir(), "vmlinux.big")
	b, _ := os.ReadFile(path)
	os.WriteFile(big, b, 0o644)
	if err := os.Truncate(big, 2<<30); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ki, err = ReadKernelImage(big)
	runtime.ReadMemStats(&after)
	if err != nil || !bytes.Equal(ki.BTF, raw) {
		t.Fatalf("2 GiB vmlinux: %v", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 8<<20 {
		t.Errorf("reading a 2 GiB vmlinux allocated %d bytes", n)
	}
}

// TestKernelImageVmlinuz: the distribution's vmlinuz unpacks to the
// kernel whose .BTF section is byte for byte what the booted guest holds
// between __start_BTF and __stop_BTF.
func TestKernelImageVmlinuz(t *testing.T) {
	ki, err := ReadKernelImage(guesttest.Path(t, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ki.Source, "bzImage (") || ki.SystemMap != nil {
		t.Errorf("source %q, %d bytes of System.map (the payload is stripped)", ki.Source, len(ki.SystemMap))
	}
	s, err := snapshot.Open(guesttest.Path(t, guesttest.KASLR, guesttest.ELFDump))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k, err := Discover(context.Background(), s, WithCPUs(s.CPUs()), WithoutBTF())
	if err != nil {
		t.Fatal(err)
	}
	start, _ := k.Symbols.Addr("__start_BTF")
	stop, _ := k.Symbols.Addr("__stop_BTF")
	mem := make([]byte, stop-start)
	if _, err := k.AS.ReadVirt(mem, start); err != nil {
		t.Fatal(err)
	}
	if len(ki.BTF) == 0 || !bytes.Equal(ki.BTF, mem) {
		t.Errorf(".BTF of vmlinuz: %d bytes, in guest memory %d bytes, equal %v", len(ki.BTF), len(mem), bytes.Equal(ki.BTF, mem))
	}
}
