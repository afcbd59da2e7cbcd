package qemu

import (
	"os"
	"slices"
	"testing"

	"github.com/vmscope/vmscope/vmi"
)

func TestParseSpec(t *testing.T) {
	s, err := ParseSpec("gdb://127.0.0.1:1234,qmp=unix:/run/q.sock")
	if err != nil || s.GDB != "127.0.0.1:1234" || s.QMP != "/run/q.sock" || s.String() != "gdb://127.0.0.1:1234,qmp=unix:/run/q.sock" {
		t.Errorf("%+v %v", s, err)
	}
	for in, want := range map[string]Spec{
		"qemu:pid=42,qmp=unix:/q.sock":                     {Process: true, PID: 42, QMP: "/q.sock"},
		"qemu:pidfile=/run/q.pid,qmp=unix:/q.sock,gdb=h:1": {Process: true, PIDFile: "/run/q.pid", QMP: "/q.sock", GDB: "h:1"},
		"qemu:qmp=unix:/q.sock":                            {Process: true, QMP: "/q.sock"},
	} {
		s, err := ParseSpec(in)
		if err != nil || s != want || s.String() != in {
			t.Errorf("%q: %+v %q %v", in, s, s.String(), err)
		}
	}
	for _, bad := range []string{"127.0.0.1:1234", "gdb://", "gdb://h:1,qmp=tcp:x", "gdb://h:1,x=y", "gdb://h:1,qmp=unix:a,qmp=unix:b",
		"qemu:pid=42", "qemu:pid=x,qmp=unix:/q", "qemu:pid=-1,qmp=unix:/q", "qemu:pid=1,pid=2,qmp=unix:/q", "qemu:pid=1,pidfile=/p,qmp=unix:/q",
		"qemu:qmp=/q", "qemu:qmp=unix:/q,gdb=nohost", "qemu:qmp=unix:/q,x=y", "qemu:", "libvirt:dom"} {
		if _, err := ParseSpec(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestReadPIDFile reads the pid of a qemu:pidfile= spec and refuses a
// file that holds no pid.
func TestReadPIDFile(t *testing.T) {
	dir := t.TempDir()
	good, bad := dir+"/good", dir+"/bad"
	os.WriteFile(good, []byte("1234\n"), 0o600)
	os.WriteFile(bad, []byte("12x\n"), 0o600)
	if pid, err := readPIDFile(good); err != nil || pid != 1234 {
		t.Errorf("good: %d %v", pid, err)
	}
	for _, p := range []string{bad, dir + "/none"} {
		if _, err := readPIDFile(p); err == nil {
			t.Errorf("%s accepted", p)
		}
	}
}

// TestParseMtree reads the memory map from QEMU 7.2's "info mtree -f"
// (abridged): only the flat view of address space "memory", RAM and ROM.
func TestParseMtree(t *testing.T) {
	const in = `FlatView #0
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram

FlatView #3
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000c9fff (prio 0, rom): pc.ram @00000000000c0000
  00000000000ca000-00000000000ccfff (prio 0, ram): pc.ram @00000000000ca000
  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #4
 AS "I/O", root: io
  0000000000000000-0000000000000007 (prio 0, ram): nonsense
`
	got, err := parseMtree(in)
	want := []vmi.Range{{Start: 0, Size: 0xa0000}, {Start: 0xc0000, Size: 0xd000}, {Start: 0x100000, Size: 0x1ff00000}, {Start: 0xfffc0000, Size: 0x40000}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("%v %v, want %v", got, err, want)
	}
	if _, err := parseMtree("FlatView #0\n AS \"I/O\"\n"); err == nil {
		t.Error("no memory view accepted")
	}
}

func TestParseTarget(t *testing.T) {
	docs := map[string]string{
		"target.xml": `<?xml version="1.0"?><target><architecture>i386:x86-64</architecture><xi:include href="core.xml"/></target>`,
		"core.xml":   `<feature name="org.gnu.gdb.i386.core"><reg name="rax" bitsize="64"/><reg name="rip" bitsize="64" regnum="16"/><reg name="eflags" bitsize="32"/></feature>`,
	}
	tg, err := parseTarget("target.xml", func(a string) ([]byte, error) { return []byte(docs[a]), nil })
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := tg.Reg("eflags"); !ok || r.Num != 17 || r.Bits != 32 || tg.Arch != "i386:x86-64" {
		t.Errorf("%+v %+v", r, tg)
	}
	loop := map[string]string{"target.xml": `<target><xi:include href="target.xml"/></target>`}
	if _, err := parseTarget("target.xml", func(a string) ([]byte, error) { return []byte(loop[a]), nil }); err == nil {
		t.Error("include loop accepted")
	}
}
