package live

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/dirty/source"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt/libvirttest"
)

// libvirtMachine is a libvirt domain (libvirttest) with a 64 MiB qcow2
// data disk vda of 4 KiB clusters filled with 0x01, dialed through
// vmi/qemu/libvirt. Writes go through the device's block backend with HMP
// qemu-io -d, as a guest's would.
type libvirtMachine struct {
	t    *testing.T
	dom  *libvirt.Domain
	td   *libvirttest.Domain
	dir  string
	qdev string
}

func startLibvirtMachine(t *testing.T) *libvirtMachine {
	t.Helper()
	libvirttest.Daemon(t)
	dir, err := os.MkdirTemp(libvirttest.RootDir, "vmscope-lvpoll-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	img := filepath.Join(dir, "data.qcow2")
	fixture.Run(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "64M")
	fixture.Run(t, dir, "qemu-io", "-c", "write -P 0x01 0 64M", img)
	u, err := user.Lookup("libvirt-qemu")
	if err != nil {
		fixture.Missing(t, "no libvirt-qemu user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, p := range []string{dir, img} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	td := libvirttest.Start(t, libvirttest.Config{Devices: fmt.Sprintf(
		`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>`, img)})
	ep, err := libvirt.Dial(context.Background(), td.Spec())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	mc := &libvirtMachine{t: t, dom: ep.Monitor.(*libvirt.Domain), td: td, dir: dir}
	d, _, err := findLibvirtDisk(context.Background(), mc.dom, "vda")
	if err != nil {
		t.Fatal(err)
	}
	mc.qdev = d.QDev
	return mc
}

func (mc *libvirtMachine) write(pattern byte, off, n int64) {
	mc.t.Helper()
	out, err := mc.dom.HMP(context.Background(), fmt.Sprintf(`qemu-io -d %s "write -P %#x %d %d"`, mc.qdev, pattern, off, n))
	if err != nil || strings.Contains(out, "rror") {
		mc.t.Fatalf("qemu-io write: %v %s", err, out)
	}
}

// bitmaps are the names of the persistent bitmaps of the disk's node and
// whether each records.
func (mc *libvirtMachine) bitmaps() map[string]bool {
	mc.t.Helper()
	d, _, err := findLibvirtDisk(context.Background(), mc.dom, "vda")
	if err != nil {
		mc.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, b := range d.Bitmaps {
		out[b.Name] = b.Recording
	}
	return out
}

// TestLibvirtPollRotationAndFailure: through libvirt's checkpoints and
// pull backup, a first poll is full and creates checkpoint 1; a write
// made during a poll is not in its view (the point in time holds) and is
// in the next poll's dirty set, exactly the 4 KiB blocks written since;
// a poll that fails deletes the checkpoint it created, and the next poll,
// from the old checkpoint, still gets every write of the failed poll's
// span and those since: no write lost. The state's cursor at the failed
// poll's checkpoint is covered; a checkpoint deleted behind vmscope's back
// forces a full pass. The domain ends with one checkpoint and its bitmap,
// no backup job and no scratch folder.
func TestLibvirtPollRotationAndFailure(t *testing.T) {
	mc := startLibvirtMachine(t)
	ctx := context.Background()
	scratch := mc.dir // t.TempDir() is not QEMU's user's to reach
	o := Options{Tag: "t1", Dir: scratch}

	v, err := BeginLibvirt(ctx, mc.dom, o)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Full || v.Read != "" || v.Next() != "vmscope-track-t1-1" {
		t.Fatalf("first poll: full %v read %q next %q (%s)", v.Full, v.Read, v.Next(), v.Why)
	}
	mc.write(0x99, 8<<20, 8192) // during poll 1
	if b := readAt(t, v, 8<<20, 8192); !bytes.Equal(b, bytes.Repeat([]byte{1}, 8192)) {
		t.Errorf("poll 1's view shows a write made after its point in time")
	}
	var c1 source.Cursor
	if _, full, _ := v.Source().Since(ctx, nil, &c1); !full || c1.Live.Bitmap != "vmscope-track-t1-1" {
		t.Errorf("first poll's source: full %v cursor %+v", full, c1.Live)
	}
	if err := v.End(ctx, true); err != nil {
		t.Fatal(err)
	}

	w := [][2]int64{{8 << 20, 8192}, {100, 10}, {20<<20 + 4096, 3 * 4096}, {63 << 20, 1 << 20}}
	for _, x := range w[1:] {
		mc.write(0x22, x[0], x[1])
	}
	v, err = BeginLibvirt(ctx, mc.dom, o)
	if err != nil {
		t.Fatal(err)
	}
	if v.Full || v.Read != "vmscope-track-t1-1" || v.Next() != "vmscope-track-t1-2" {
		t.Fatalf("poll 2: full %v (%s) read %q next %q", v.Full, v.Why, v.Read, v.Next())
	}
	if !rangeset.Equal(v.Dirty, set(w...)) {
		t.Errorf("poll 2 dirty %v, want %v", v.Dirty, set(w...))
	}
	var c2 source.Cursor
	if d, full, err := v.Source().Since(ctx, &c1, &c2); err != nil || full || !rangeset.Equal(d, v.Dirty) {
		t.Errorf("poll 2 source: full %v (%s) err %v", full, v.Why, err)
	}
	mc.write(0x33, 30<<20, 4096) // during poll 2
	if b := readAt(t, v, 30<<20, 4096); b[0] != 1 {
		t.Errorf("poll 2's view shows a write made during the poll")
	}
	if b := readAt(t, v, 20<<20+4096, 4096); b[0] != 0x22 {
		t.Errorf("poll 2's view lacks a write made before it")
	}
	// The poll fails: checkpoint 2 goes, checkpoint 1 stays and records.
	if err := v.End(ctx, false); err != nil {
		t.Fatal(err)
	}
	cps, err := mc.dom.Checkpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cps, []string{"vmscope-track-t1-1"}) {
		t.Errorf("checkpoints after a failed poll: %v; want vmscope-track-t1-1", cps)
	}
	if bm := mc.bitmaps(); len(bm) != 1 || !bm["vmscope-track-t1-1"] {
		t.Errorf("bitmaps after a failed poll: %v; want vmscope-track-t1-1 recording", bm)
	}
	mc.write(0x44, 40<<20, 4096) // after the failed poll

	v, err = BeginLibvirt(ctx, mc.dom, o)
	if err != nil {
		t.Fatal(err)
	}
	want := set(append(w, [2]int64{30 << 20, 4096}, [2]int64{40 << 20, 4096})...)
	if v.Full || v.Read != "vmscope-track-t1-1" || !rangeset.Equal(v.Dirty, want) {
		t.Errorf("poll 3 after a failed one: full %v read %s dirty %v, want %v", v.Full, v.Read, v.Dirty, want)
	}
	// the state still at poll 1's cursor: covered
	var c3 source.Cursor
	if _, full, _ := v.Source().Since(ctx, &c1, &c3); full {
		t.Errorf("state of poll 1 after a failed poll 2: full pass (%s)", v.Why)
	}
	if err := v.End(ctx, true); err != nil {
		t.Fatal(err)
	}

	// Checkpoint deleted by another tool: full pass, said why.
	if err := mc.dom.DeleteCheckpoint(ctx, c3.Live.Bitmap); err != nil {
		t.Fatal(err)
	}
	v, err = BeginLibvirt(ctx, mc.dom, o)
	if err != nil {
		t.Fatal(err)
	}
	var c4 source.Cursor
	if _, full, _ := v.Source().Since(ctx, &c3, &c4); !full || !strings.Contains(v.Why, "first poll") {
		t.Errorf("poll after the checkpoint was deleted: full %v (%s)", full, v.Why)
	}
	if err := v.End(ctx, true); err != nil {
		t.Fatal(err)
	}
	cps, _ = mc.dom.Checkpoints(ctx)
	if len(cps) != 1 || cps[0] != c4.Live.Bitmap {
		t.Errorf("checkpoints left: %v; want %s", cps, c4.Live.Bitmap)
	}
	if _, err := mc.dom.BackupJob(ctx); err == nil {
		t.Errorf("a backup job is left")
	}
	if ms, _ := filepath.Glob(filepath.Join(scratch, Prefix+"*")); len(ms) != 0 {
		t.Errorf("scratch left: %v", ms)
	}
}

// TestLibvirtReleaseAndBusy: a second poll while one runs refuses
// (ErrBusy, libvirt's backup job); ReleaseLibvirt aborts the job a killed
// poll left (here: a poll never ended) and removes its scratch folder, and
// leaves another tool's backup job alone.
func TestLibvirtReleaseAndBusy(t *testing.T) {
	mc := startLibvirtMachine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	scratch := mc.dir // t.TempDir() is not QEMU's user's to reach
	v, err := BeginLibvirt(ctx, mc.dom, Options{Tag: "t2", Dir: scratch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := BeginLibvirt(ctx, mc.dom, Options{Tag: "t3", Dir: scratch}); err == nil || !strings.Contains(err.Error(), "a vmscope poll is running") {
		t.Errorf("a second poll: %v", err)
	}
	v.Client.Close() // the poll "dies"
	rel, err := ReleaseLibvirt(ctx, mc.dom)
	if err != nil || len(rel.Removed) != 2 {
		t.Fatalf("release: %+v %v", rel, err)
	}
	if _, err := mc.dom.BackupJob(ctx); err == nil {
		t.Errorf("the job still runs after release")
	}
	if ms, _ := filepath.Glob(filepath.Join(scratch, Prefix+"*")); len(ms) != 0 {
		t.Errorf("scratch left: %v", ms)
	}
	// another tool's job
	other := filepath.Join(mc.dir, "other")
	os.Mkdir(other, 0o777)
	exec.Command("chown", "libvirt-qemu", other).Run()
	err = mc.dom.BeginPullBackup(ctx, libvirt.PullBackup{Socket: filepath.Join(other, "nbd.sock"),
		Disks: []libvirt.BackupDisk{{Target: "vda", Scratch: filepath.Join(other, "s.qcow2")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer mc.dom.AbortJob(context.WithoutCancel(ctx))
	rel, err = ReleaseLibvirt(ctx, mc.dom)
	if err != nil || len(rel.Removed) != 0 {
		t.Errorf("release with another tool's job: %+v %v", rel, err)
	}
	if _, err := mc.dom.BackupJob(ctx); err != nil {
		t.Errorf("release ended another tool's job: %v", err)
	}
}
