package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt/libvirttest"
)

// libvirtStatus is QEMU's own run state of a libvirt domain, asked through
// the test's own libvirt connection (query-status through the monitor
// pass-through), independently of the code under test.
type libvirtStatus struct {
	l   *golibvirt.Libvirt
	dom golibvirt.Domain
}

func (s libvirtStatus) Status(ctx context.Context) (qemu.Status, error) {
	out, err := s.l.QEMUDomainMonitorCommand(s.dom, `{"execute":"query-status"}`, 0)
	if err != nil {
		return qemu.Status{}, err
	}
	var r struct {
		Return qemu.Status `json:"return"`
	}
	err = json.Unmarshal([]byte(out), &r)
	return r.Return, err
}

// libvirtQEMUOwn gives path to libvirt's QEMU user.
func libvirtQEMUOwn(t testing.TB, paths ...string) {
	t.Helper()
	u, err := user.Lookup("libvirt-qemu")
	if err != nil {
		fixture.Missing(t, "no libvirt-qemu user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, p := range paths {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
}

// bootLibvirtLive boots the guest of testdata/livedirty as a transient
// libvirt domain (libvirttest): a size-MiB ext4 qcow2 data disk vda (4 KiB
// clusters, so that libvirt's checkpoint bitmaps have QEMU's finest
// granularity), the workload's commands on a second serial port that is a
// unix socket chardev in a folder libvirt's QEMU user owns. It runs the
// vmscope binary of vmscopeBin.
func bootLibvirtLive(t *testing.T, sizeMiB int, appendLine string) (*pollGuest, *libvirttest.Domain) {
	t.Helper()
	kernel, initrd := liveFixture(t)
	libvirttest.Daemon(t)
	work, err := os.MkdirTemp(libvirttest.RootDir, "vmscope-ld-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	tmp := t.TempDir()
	raw := filepath.Join(tmp, "disk.raw")
	fixture.Run(t, tmp, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", raw, fmt.Sprintf("%dM", sizeMiB))
	img := filepath.Join(work, "disk.qcow2")
	fixture.Run(t, tmp, "qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=4096", raw, img)
	ctl := filepath.Join(work, "ctl.sock")
	libvirtQEMUOwn(t, work, img)
	bin := vmscopeBin(t)
	d := libvirttest.Start(t, libvirttest.Config{MemMiB: 256, Kernel: kernel, Initrd: initrd, Append: appendLine, Devices: fmt.Sprintf(`
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <serial type='unix'><source mode='bind' path='%s'/><target port='1'/></serial>`, img, ctl)})
	l, dom := d.Libvirt()
	lg := &pollGuest{t: t, console: d.Console, bin: bin, bg: !strings.Contains(appendLine, "vmscope.bg=0"),
		spec: d.Spec(), spec2: d.Spec(), mon: libvirtStatus{l, dom}}
	if strings.Contains(lg.log(), "=== FAIL") {
		t.Fatalf("the guest failed:\n%s", tail(lg.log(), 2000))
	}
	if lg.ctl, err = net.Dial("unix", ctl); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.ctl.Close() })
	return lg, d
}

// checkpoints lists the domain's checkpoints through the test's own
// libvirt connection.
func checkpoints(t *testing.T, d *libvirttest.Domain) []string {
	t.Helper()
	l, dom := d.Libvirt()
	cps, _, err := l.DomainListAllCheckpoints(dom, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cps {
		names = append(names, c.Name)
	}
	return names
}

// TestLiveDirtyLibvirt polls a libvirt domain's disk through libvirt's
// checkpoints and pull backup (vmscope dirty --guest libvirt:DOMAIN) after
// each round of the workload while the background writer writes: round 1
// is a full pass, rounds 2 and 3 miss no path and report nothing but the
// round's and the background writer's files; scan --dirty live finds the
// round-2 marker; QEMU never leaves the running state and the workload
// counter moves during every poll. Then a poll is SIGKILLed after its
// backup began (step 1), after it read the export (step 3: a second
// poller refuses) and after it saved its state (step 4): guest release
// aborts the job it left, and the next poll misses nothing and is not a
// full pass. The domain is left with one vmscope checkpoint.
func TestLiveDirtyLibvirt(t *testing.T) {
	lg, d := bootLibvirtLive(t, 64, "")
	state := filepath.Join(t.TempDir(), "state.db")
	t0 := time.Now()

	lg.round(1)
	doc, errOut := lg.poll(state)
	if !strings.Contains(errOut, "full pass") || !strings.Contains(doc.Source, "bitmap generation 1") || !strings.Contains(doc.Source, "libvirt:") {
		t.Errorf("first poll: %s %s", doc.Source, errOut)
	}
	lg.check(1, true, doc)
	cps := checkpoints(t, d)
	if len(cps) != 1 || !strings.HasPrefix(cps[0], "vmscope-track-") || !strings.HasSuffix(cps[0], "-1") {
		t.Fatalf("checkpoints after poll 1: %v", cps)
	}
	tag := strings.TrimSuffix(cps[0], "-1")

	lg.round(2)
	doc, errOut = lg.poll(state)
	t.Logf("poll 2: %d changes; %s", len(doc.Changes), errOut)
	if !strings.Contains(doc.Source, "bitmap generation 2, writes since generation 1") {
		t.Errorf("poll 2 source: %s", doc.Source)
	}
	lg.check(2, false, doc)
	if cps := checkpoints(t, d); len(cps) != 1 || cps[0] != tag+"-2" {
		t.Errorf("checkpoints after poll 2: %v; want %s-2", cps, tag)
	}

	rules := filepath.Join(t.TempDir(), "marker.yar")
	os.WriteFile(rules, []byte(`rule live_marker { strings: $m = "VMSCOPE_LIVE_MARKER_ROUND2" condition: $m }`), 0o644)
	out, errOut, code := lg.run(nil, "scan", "--guest", lg.spec, "--dirty", "live", "--state", state, "--rules", rules, "--format", "json")
	if code != 1 || !strings.Contains(out, `"/r2/marker.txt"`) || !strings.Contains(out, "live_marker") {
		t.Errorf("scan --dirty live: exit %d, marker not found: %s\n%s", code, errOut, tail(out, 1500))
	}

	// A full scan of the live disk at one point in time: no state, no
	// checkpoint made or deleted.
	before := checkpoints(t, d)
	out, errOut, code = lg.run(nil, "scan", "--guest", lg.spec, "--rules", rules, "--format", "json")
	if code != 1 || !strings.Contains(out, `"/r2/marker.txt"`) {
		t.Errorf("scan --guest (full): exit %d, marker not found: %s\n%s", code, errOut, tail(out, 1500))
	}
	if after := checkpoints(t, d); !slices.Equal(before, after) {
		t.Errorf("a full scan changed the checkpoints: %v -> %v", before, after)
	}

	lg.round(3)
	doc, _ = lg.poll(state)
	lg.check(3, false, doc)
	t.Logf("3 rounds, 3 polls and a scan in %v", time.Since(t0).Round(time.Millisecond))

	for i, step := range []int{1, 3, 4} {
		k := 4 + i
		lg.round(k)
		killed := lg.killedPoll(state, step, func() {
			if step != 3 {
				return
			}
			_, errOut, code := lg.run(nil, "dirty", "--guest", lg.spec, "--state", state)
			if code != 2 || !strings.Contains(errOut, "another vmscope") {
				t.Errorf("a second poller of the same state: exit %d: %s", code, errOut)
			}
			_, errOut, code = lg.run(nil, "dirty", "--guest", lg.spec2, "--state", state+".other")
			if code != 2 || !strings.Contains(errOut, "a vmscope poll is running on this guest") || !strings.Contains(errOut, "backup job") {
				t.Errorf("a second poller with another state: exit %d: %s", code, errOut)
			}
		})
		out, errOut, code := lg.run(nil, "guest", "release", "--guest", lg.spec)
		if code != 0 || !strings.Contains(out, "live poll: removed backup job") {
			t.Errorf("step %d: guest release: exit %d: %s %s", step, code, out, errOut)
		}
		doc, errOut := lg.poll(state)
		t.Logf("step %d: release: %s; poll: %d changes; %s", step, strings.TrimSpace(out), len(doc.Changes), errOut)
		if strings.Contains(errOut, "full pass") {
			t.Errorf("step %d: a full pass after release: %s", step, errOut)
		}
		if want := fmt.Sprintf("writes since generation %d from %s-%d", 4+2*i, tag, 4+2*i); !strings.Contains(doc.Source, want) {
			t.Errorf("step %d: poll after release: %s; want %q (the oldest checkpoint, covering the killed poll's)", step, doc.Source, want)
		}
		if step >= 4 {
			lg.check(k, false, killed, doc)
		} else {
			lg.check(k, false, doc)
		}
	}
	if cps := checkpoints(t, d); len(cps) != 1 {
		t.Errorf("checkpoints left: %v; want one", cps)
	}
	if ms, _ := filepath.Glob(filepath.Join(os.TempDir(), "vmscope-lv-*")); len(ms) != 0 {
		t.Errorf("scratch folders left: %v", ms)
	}
	t.Logf("whole test after boot: %v", time.Since(t0).Round(time.Millisecond))
}
