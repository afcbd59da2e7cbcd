package live

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/dirty/source"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// machine is a QEMU (TCG, no guest kernel: the firmware finds nothing to
// boot and the machine runs idle) with a 64 MiB qcow2 disk on node disk0,
// device vd0. Writes go through the device's own block backend with HMP
// qemu-io -d, as a guest's would.
type machine struct {
	t    *testing.T
	m    *qemu.QMP
	img  string
	dir  string
	proc *exec.Cmd
}

func startMachine(t *testing.T) *machine {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	fixture.Run(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	fixture.Run(t, dir, "qemu-io", "-c", "write -P 0x01 0 64M", img)
	return startMachineOn(t, dir, img)
}

// startMachineOn starts QEMU on the disk image img (scratch files in dir).
func startMachineOn(t *testing.T, dir, img string) *machine {
	t.Helper()
	sock := filepath.Join(dir, "qmp.sock")
	os.Remove(sock)
	cmd := exec.Command(fixture.Tool(t, "qemu-system-x86_64"), "-accel", "tcg", "-nodefaults", "-display", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-blockdev", "driver=file,node-name=disk0-file,filename="+img,
		"-blockdev", "driver=qcow2,node-name=disk0,file=disk0-file",
		"-device", "virtio-blk-pci,drive=disk0,id=vd0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var q *qemu.QMP
	for {
		var err error
		if q, err = qemu.DialQMP(ctx, sock); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("qmp: %v\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { q.Close() })
	return &machine{t: t, m: q, img: img, dir: dir, proc: cmd}
}

// write writes pattern at off+n through QEMU's block layer.
func (mc *machine) write(pattern byte, off, n int64) {
	mc.t.Helper()
	out, err := mc.m.HMP(context.Background(), fmt.Sprintf(`qemu-io -d /machine/peripheral/vd0/virtio-backend "write -P %#x %d %d"`, pattern, off, n))
	if err != nil || strings.Contains(out, "rror") || strings.Contains(out, "onflict") {
		mc.t.Fatalf("qemu-io write: %v %s", err, out)
	}
}

func (mc *machine) opts(tag string) Options {
	return Options{Dir: mc.dir, Tag: tag}
}

// set is the 4 KiB-granular byte ranges of the writes.
func set(ws ...[2]int64) rangeset.Set {
	var s rangeset.Set
	for _, w := range ws {
		s.Add(w[0]&^4095, (w[0]+w[1]+4095)&^4095)
	}
	return s
}

func readAt(t *testing.T, v *View, off, n int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := v.Image.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPollPointInTimeAndRotation: a first poll is full; each later poll's
// dirty set is exactly the 4 KiB blocks written between the two points in
// time (not those written during the poll, which the next poll gets); the
// export keeps the disk as it was at the poll's point in time while the
// guest writes; a failed poll's writes come back in the next one; QEMU is
// left with exactly one tracking bitmap and no vmscope- object.
func TestPollPointInTimeAndRotation(t *testing.T) {
	mc := startMachine(t)
	ctx := context.Background()
	o := mc.opts("t1")

	v, err := Begin(ctx, mc.m, o)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Full || v.Read != "" || v.Gen != 1 {
		t.Fatalf("first poll: full %v read %q gen %d (%s)", v.Full, v.Read, v.Gen, v.Why)
	}
	// Written during the poll: the view keeps the old bytes.
	mc.write(0x99, 8<<20, 8192)
	if b := readAt(t, v, 8<<20, 8192); !bytes.Equal(b, bytes.Repeat([]byte{1}, 8192)) {
		t.Errorf("the view shows a write made after its point in time")
	}
	var next source.Cursor
	if _, full, _ := v.Source().Since(ctx, nil, &next); !full || next.Live.Bitmap != "vmscope-track-t1-1" {
		t.Errorf("first poll's source: full %v cursor %+v", full, next.Live)
	}
	if err := v.End(ctx, true); err != nil {
		t.Fatal(err)
	}

	// Poll 2: the write made during poll 1 and the writes since.
	w := [][2]int64{{8 << 20, 8192}, {100, 10}, {20<<20 + 4096, 3 * 4096}, {63 << 20, 1 << 20}}
	for _, x := range w[1:] {
		mc.write(0x22, x[0], x[1])
	}
	v, err = Begin(ctx, mc.m, o)
	if err != nil {
		t.Fatal(err)
	}
	if v.Full || v.Read != "vmscope-track-t1-1" || v.Next() != "vmscope-track-t1-2" {
		t.Fatalf("poll 2: full %v (%s) read %q next %q", v.Full, v.Why, v.Read, v.Next())
	}
	if !rangeset.Equal(v.Dirty, set(w...)) {
		t.Errorf("poll 2 dirty %v, want %v", v.Dirty, set(w...))
	}
	prev := next
	dirty, full, err := v.Source().Since(ctx, &prev, &next)
	if err != nil || full || !rangeset.Equal(dirty, v.Dirty) {
		t.Errorf("poll 2 source: full %v err %v", full, err)
	}
	mc.write(0x33, 30<<20, 4096) // during poll 2
	if b := readAt(t, v, 30<<20, 4096); b[0] != 1 {
		t.Errorf("poll 2's view shows a write made during the poll")
	}
	if b := readAt(t, v, 20<<20+4096, 4096); b[0] != 0x22 {
		t.Errorf("poll 2's view lacks a write made before it")
	}
	// The poll fails: its bitmap is merged into the next one.
	if err := v.End(ctx, false); err != nil {
		t.Fatal(err)
	}

	v, err = Begin(ctx, mc.m, o)
	if err != nil {
		t.Fatal(err)
	}
	want := set(append(w, [2]int64{30 << 20, 4096})...)
	if v.Full || v.Read != "vmscope-track-t1-2" || !rangeset.Equal(v.Dirty, want) {
		t.Errorf("poll 3 after a failed one: full %v read %s dirty %v, want %v", v.Full, v.Read, v.Dirty, want)
	}
	// The state still points at bitmap 1 (poll 2 was not saved): merged
	// into 2, which this poll read; no full pass.
	if _, full, _ := v.Source().Since(ctx, &prev, &next); full {
		t.Errorf("state of poll 1 after a failed poll 2: full pass (%s)", v.Why)
	}
	if err := v.End(ctx, true); err != nil {
		t.Fatal(err)
	}
	d, err := FindDisk(ctx, mc.m, "vd0")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Bitmaps) != 1 || d.Bitmaps[0].Name != "vmscope-track-t1-3" || !d.Bitmaps[0].Persistent || d.Bitmaps[0].Granularity != 4096 {
		t.Errorf("bitmaps left: %+v", d.Bitmaps)
	}
	if l, _ := findLeftovers(ctx, mc.m); !l.Empty() {
		t.Errorf("left behind: %s", l)
	}
	if ms, _ := filepath.Glob(filepath.Join(mc.dir, Prefix+"*")); len(ms) != 0 {
		t.Errorf("files left: %v", ms)
	}
}

// TestKilledPollReleased: a poll abandoned at each step (as a killed
// process leaves it) makes the next poll refuse (ErrBusy); Release
// removes its objects and merges its bitmap forward; the poll after that
// misses no write since the last good poll.
func TestKilledPollReleased(t *testing.T) {
	mc := startMachine(t)
	ctx := context.Background()
	o := mc.opts("k")
	v, err := Begin(ctx, mc.m, o)
	if err != nil {
		t.Fatal(err)
	}
	var cur source.Cursor
	v.Source().Since(ctx, nil, &cur)
	if err := v.End(ctx, true); err != nil {
		t.Fatal(err)
	}
	var all [][2]int64
	for step := 1; step <= 5; step++ {
		x := [2]int64{int64(step) << 20, 4096}
		all = append(all, x)
		mc.write(byte(step), x[0], x[1])
		v, err := Begin(ctx, mc.m, o)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		// Abandon it as a kill after step k would.
		v.Client.Close()
		v.Client = nil
		switch step {
		case 1: // the fleecing node and the rotated bitmaps
			mustQMP(t, mc.m, "block-export-del", map[string]any{"id": exportID})
			waitGone(ctx, "export", exportGone(ctx, mc.m, exportID))
			mustQMP(t, mc.m, "block-job-cancel", map[string]any{"device": backupJob, "force": true})
			waitGone(ctx, "job", jobGone(ctx, mc.m, backupJob))
			mustQMP(t, mc.m, "nbd-server-stop", nil)
		case 5: // export gone, the rest left
			mustQMP(t, mc.m, "block-export-del", map[string]any{"id": exportID})
			waitGone(ctx, "export", exportGone(ctx, mc.m, exportID))
		}
		if _, err := Begin(ctx, mc.m, o); !errors.Is(err, ErrBusy) {
			t.Fatalf("step %d: a poll over a killed one: %v, want ErrBusy", step, err)
		}
		rel, err := Release(ctx, mc.m, mc.dir)
		if err != nil {
			t.Fatalf("step %d: release: %v", step, err)
		}
		if len(rel.Merged) != 1 || len(rel.Removed) == 0 {
			t.Errorf("step %d: released %+v", step, rel)
		}
		if l, _ := findLeftovers(ctx, mc.m); !l.Empty() {
			t.Errorf("step %d: left after release: %s", step, l)
		}
		if ms, _ := filepath.Glob(filepath.Join(mc.dir, Prefix+"*")); len(ms) != 0 {
			t.Errorf("step %d: files left after release: %v", step, ms)
		}
		// The next poll covers every write since the last good poll.
		v, err = Begin(ctx, mc.m, o)
		if err != nil {
			t.Fatal(err)
		}
		var next source.Cursor
		dirty, full, _ := v.Source().Since(ctx, &cur, &next)
		if full || !rangeset.Equal(dirty, set(all...)) {
			t.Errorf("step %d: poll after release: full %v (%s) dirty %v, want %v", step, full, v.Why, dirty, set(all...))
		}
		// This one fails too (not saved): the writes stay due.
		if err := v.End(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	if rel, err := Release(ctx, mc.m, mc.dir); err != nil || len(rel.Removed)+len(rel.Merged) != 0 {
		t.Errorf("release with nothing left: %+v %v", rel, err)
	}
}

// TestFullPassReasons: a bitmap removed by another tool, another state's
// bitmaps, a state made on another disk.
func TestFullPassReasons(t *testing.T) {
	mc := startMachine(t)
	ctx := context.Background()
	poll := func(tag string, prev *source.Cursor) (source.Cursor, bool, string) {
		t.Helper()
		v, err := Begin(ctx, mc.m, mc.opts(tag))
		if err != nil {
			t.Fatal(err)
		}
		var next source.Cursor
		_, full, _ := v.Source().Since(ctx, prev, &next)
		if err := v.End(ctx, true); err != nil {
			t.Fatal(err)
		}
		return next, full, v.Why
	}
	a, _, _ := poll("a", nil)
	b, _, _ := poll("b", nil) // a second state keeps its own bitmap
	a2, full, why := poll("a", &a)
	if full {
		t.Errorf("state a after state b polled: full (%s)", why)
	}
	if _, full, _ := poll("b", &b); full {
		t.Error("state b after state a polled: full")
	}
	mustQMP(t, mc.m, "block-dirty-bitmap-remove", map[string]any{"node": "disk0", "name": a2.Live.Bitmap})
	a3, full, why := poll("a", &a2)
	if !full || !strings.Contains(why, "no tracking bitmap") {
		t.Errorf("bitmap removed by another tool: full %v (%s)", full, why)
	}
	other := a3
	other.Live = &source.LiveCursor{Node: "node=x file=/y size=1", Bitmap: a3.Live.Bitmap}
	if _, full, why := poll("a", &other); !full || !strings.Contains(why, "made on") {
		t.Errorf("state of another disk: full %v (%s)", full, why)
	}
	// Without a state: a point in time, no bitmap added or read.
	before, _ := FindDisk(ctx, mc.m, "")
	v, err := Begin(ctx, mc.m, Options{Dir: mc.dir})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Full || v.Read != "" || v.Next() != "" || v.Image.Size() != 64<<20 {
		t.Errorf("untracked view: full %v read %q next %q", v.Full, v.Read, v.Next())
	}
	if err := v.End(ctx, true); err != nil {
		t.Fatal(err)
	}
	after, _ := FindDisk(ctx, mc.m, "")
	if fmt.Sprint(before.Bitmaps) != fmt.Sprint(after.Bitmaps) {
		t.Errorf("an untracked view changed the bitmaps: %v → %v", before.Bitmaps, after.Bitmaps)
	}
	for _, id := range []string{"", "vd0", "disk0", "/machine/peripheral/vd0/virtio-backend"} {
		if d, err := FindDisk(ctx, mc.m, id); err != nil || d.Node != "disk0" || d.File != mc.img {
			t.Errorf("--disk %q: %+v %v", id, d, err)
		}
	}
	if _, err := FindDisk(ctx, mc.m, "nope"); err == nil || !strings.Contains(err.Error(), "node disk0, device vd0") {
		t.Errorf("unknown disk: %v", err)
	}
}

func mustQMP(t *testing.T, m qemu.Monitor, cmd string, args any) {
	t.Helper()
	if _, err := m.Execute(context.Background(), cmd, args); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}

// TestRestart: a persistent tracking bitmap survives a clean QEMU quit
// and the next poll is incremental; after QEMU was killed the bitmap is
// in-use (inconsistent) and the next poll is a full pass that says so.
func TestRestart(t *testing.T) {
	mc := startMachine(t)
	ctx := context.Background()
	o := mc.opts("r")
	poll := func(mc *machine, prev *source.Cursor) (*View, source.Cursor, rangeset.Set, bool) {
		t.Helper()
		v, err := Begin(ctx, mc.m, o)
		if err != nil {
			t.Fatal(err)
		}
		var next source.Cursor
		dirty, full, _ := v.Source().Since(ctx, prev, &next)
		if err := v.End(ctx, true); err != nil {
			t.Fatal(err)
		}
		return v, next, dirty, full
	}
	_, cur, _, _ := poll(mc, nil)
	mc.write(0x42, 5<<20, 4096)
	if _, err := mc.m.Execute(ctx, "quit", nil); err != nil {
		t.Fatal(err)
	}
	mc.proc.Wait()
	mc = startMachineOn(t, mc.dir, mc.img)
	_, cur, dirty, full := poll(mc, &cur)
	if full || !rangeset.Equal(dirty, set([2]int64{5 << 20, 4096})) {
		t.Errorf("after a clean restart: full %v dirty %v", full, dirty)
	}
	// Killed while it holds a bitmap loaded from the image (in-use there).
	mc.write(0x43, 6<<20, 4096)
	mc.m.Execute(ctx, "quit", nil)
	mc.proc.Wait()
	mc = startMachineOn(t, mc.dir, mc.img)
	mc.proc.Process.Kill()
	mc.proc.Wait()
	mc = startMachineOn(t, mc.dir, mc.img)
	v, cur, _, full := poll(mc, &cur)
	if !full || !strings.Contains(v.Why, "inconsistent") {
		t.Errorf("after QEMU was killed with the bitmap loaded: full %v (%s)", full, v.Why)
	}
	// Killed before it stored its new bitmap: missing.
	mc.proc.Process.Kill()
	mc.proc.Wait()
	mc = startMachineOn(t, mc.dir, mc.img)
	v, _, _, full = poll(mc, &cur)
	if !full || !strings.Contains(v.Why, "no tracking bitmap") {
		t.Errorf("after QEMU was killed before storing the bitmap: full %v (%s)", full, v.Why)
	}
	d, _ := FindDisk(ctx, mc.m, "")
	if len(d.Bitmaps) != 1 || d.Bitmaps[0].Inconsistent || !d.Bitmaps[0].Recording {
		t.Errorf("bitmaps after the full pass: %+v", d.Bitmaps)
	}
}
