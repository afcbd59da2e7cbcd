package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt/libvirttest"
)

// withDisk boots a domain with a 64 MiB qcow2 data disk vda (made by
// qemu-img) in a folder libvirt's QEMU user may write, and dials it.
func withDisk(t testing.TB) (*libvirttest.Domain, *Domain, string) {
	qemuImg := fixture.Tool(t, "qemu-img")
	libvirttest.Daemon(t)
	dir, err := os.MkdirTemp(libvirttest.RootDir, "vmscope-backup-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	disk := filepath.Join(dir, "data.qcow2")
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	u, err := user.Lookup("libvirt-qemu")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, p := range []string{dir, disk} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	d := libvirttest.Start(t, libvirttest.Config{Devices: fmt.Sprintf(
		`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>`, disk)})
	ctx := context.Background()
	ep, err := Dial(ctx, d.Spec())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	return d, ep.Monitor.(*Domain), dir
}

// nbdOpts are qemu-img/qemu-io --image-opts for an export of a backup.
func nbdOpts(sock, export, bitmapContext string) string {
	s := "driver=nbd,server.type=unix,server.path=" + sock + ",export=" + export
	if bitmapContext != "" {
		s += ",x-dirty-bitmap=" + bitmapContext
	}
	return s
}

// TestPullBackup creates a checkpoint, writes 64 KiB at 1 MiB of the data
// disk through QEMU (HMP qemu-io), starts an incremental pull backup from
// the checkpoint, reads the job's NBD socket, export and bitmap context
// from libvirt, and checks them with QEMU's own NBD client: qemu-img map
// over the bitmap context shows exactly the written extent as dirty, and
// qemu-io reads the written pattern from the export. QEMU's block nodes
// hold the two checkpoints' persistent bitmaps. Then it aborts the job:
// the socket is gone and libvirt has no backup job.
func TestPullBackup(t *testing.T) {
	d, dom, dir := withDisk(t)
	ctx := ctxT(t, 5*time.Minute)
	qemuImg, qemuIO := fixture.Tool(t, "qemu-img"), fixture.Tool(t, "qemu-io")

	if err := dom.CreateCheckpoint(ctx, "vmscope-c1", []string{"vda"}); err != nil {
		t.Fatal(err)
	}
	qdev := diskQdev(t, ctx, dom, "data.qcow2")
	out, err := dom.HMP(ctx, `qemu-io -d `+qdev+` "write -P 0x5a 1M 64k"`)
	// (QEMU 7.2 prints qemu-io's report on its stdout, not to the
	// monitor: the export's content below shows the write.)
	if err != nil || strings.Contains(out, "Error") {
		t.Fatalf("qemu-io write: %q %v", out, err)
	}

	sock := filepath.Join(dir, "nbd.sock")
	t0 := time.Now()
	err = dom.BeginPullBackup(ctx, PullBackup{
		Socket:      sock,
		Incremental: "vmscope-c1",
		Disks:       []BackupDisk{{Target: "vda", Scratch: filepath.Join(dir, "scratch-vda.qcow2")}},
		Checkpoint:  "vmscope-c2",
	})
	start := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	aborted := false
	defer func() {
		if !aborted {
			dom.AbortJob(context.WithoutCancel(ctx))
		}
	}()
	job, err := dom.BackupJob(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if job.Socket != sock || job.Incremental != "vmscope-c1" || len(job.Exports) != 1 {
		t.Fatalf("backup job %+v", job)
	}
	e := job.Exports[0]
	if e.Target != "vda" || e.Name != "vda" || e.Context() != "qemu:dirty-bitmap:backup-vda" {
		t.Errorf("export %+v, context %q; want vda, qemu:dirty-bitmap:backup-vda", e, e.Context())
	}
	if fi, err := os.Stat(job.Socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("NBD socket %s: %v %v", job.Socket, fi, err)
	}

	// QEMU's NBD client over the bitmap context: one extent differs, the
	// one written.
	b, err := exec.CommandContext(ctx, qemuImg, "map", "--output=json", "--image-opts", nbdOpts(job.Socket, e.Name, e.Context())).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img map over %s: %v: %s", e.Context(), err, b)
	}
	var ext []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal(b, &ext); err != nil {
		t.Fatalf("qemu-img map: %v: %s", err, b)
	}
	if len(ext) != 3 || ext[1].Start != 1<<20 || ext[1].Length != 64<<10 || ext[0].Data == ext[1].Data || ext[2].Data == ext[1].Data {
		t.Errorf("qemu-img map of %s: %s; want the 64 KiB at 1 MiB alone different", e.Context(), b)
	}
	// the export is the disk at the backup's start
	b, err = exec.CommandContext(ctx, qemuIO, "-r", "--image-opts", nbdOpts(job.Socket, e.Name, ""), "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0 0 1M").CombinedOutput()
	if err != nil || strings.Contains(string(b), "Pattern verification failed") || strings.Count(string(b), "read ") != 2 {
		t.Errorf("qemu-io read of the export: %v: %s", err, b)
	}
	// QEMU holds both checkpoints as persistent bitmaps.
	r, err := dom.Execute(ctx, "query-named-block-nodes", nil)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []struct {
		Bitmaps []struct {
			Name       string `json:"name"`
			Persistent bool   `json:"persistent"`
		} `json:"dirty-bitmaps"`
	}
	if err := json.Unmarshal(r, &nodes); err != nil {
		t.Fatal(err)
	}
	persistent := map[string]bool{}
	for _, n := range nodes {
		for _, bm := range n.Bitmaps {
			if bm.Persistent {
				persistent[bm.Name] = true
			}
		}
	}
	if !persistent["vmscope-c1"] || !persistent["vmscope-c2"] {
		t.Errorf("persistent bitmaps %v; want vmscope-c1 and vmscope-c2", persistent)
	}

	t0 = time.Now()
	err = dom.AbortJob(ctx)
	abort := time.Since(t0)
	aborted = true
	if err != nil {
		t.Fatal(err)
	}
	// the abort is asynchronous: the job ends soon after
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := dom.BackupJob(ctx); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the backup job still runs 30 s after the abort")
		}
	}
	gone := time.Since(t0)
	if _, err := os.Stat(job.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NBD socket after the abort: %v", err)
	}
	for _, c := range []string{"vmscope-c2", "vmscope-c1"} {
		if err := dom.DeleteCheckpoint(ctx, c); err != nil {
			t.Error(err)
		}
	}
	t.Logf("domain %s: backup-begin %v, abort %v (job gone after %v)", d.Name, start.Round(time.Millisecond), abort.Round(time.Millisecond), gone.Round(time.Millisecond))
}

// diskQdev is the QOM path of the device whose image file ends in name
// (query-block).
func diskQdev(t *testing.T, ctx context.Context, dom *Domain, name string) string {
	r, err := dom.Execute(ctx, "query-block", nil)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []struct {
		Qdev     string `json:"qdev"`
		Inserted *struct {
			File string `json:"file"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(r, &blocks); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if b.Inserted != nil && strings.HasSuffix(b.Inserted.File, "/"+name) && b.Qdev != "" {
			return b.Qdev
		}
	}
	t.Fatalf("query-block: no device of %s: %s", name, r)
	return ""
}

// BenchmarkPullBackup is a full pull backup's start (the export ready)
// and abort.
func BenchmarkPullBackup(b *testing.B) {
	_, dom, dir := withDisk(b)
	ctx := context.Background()
	bk := PullBackup{Socket: filepath.Join(dir, "nbd.sock"), Disks: []BackupDisk{{Target: "vda", Scratch: filepath.Join(dir, "scratch-vda.qcow2")}}}
	b.ResetTimer()
	for b.Loop() {
		if err := dom.BeginPullBackup(ctx, bk); err != nil {
			b.Fatal(err)
		}
		if err := dom.AbortJob(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
