package libvirttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestDaemonReused runs the fixture script again after Daemon: it reuses
// the running libvirtd (same pid), whose mount namespace is not the
// host's and whose /dev/kvm is not the host's KVM device (10:232), while
// the host's is. (Without a host /dev/kvm there is nothing to hide.)
func TestDaemonReused(t *testing.T) {
	Daemon(t)
	out, err := exec.Command("bash", filepath.Join(fixture.Root(), "testdata", "libvirt", "libvirt.sh"), "daemon").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 3 || f[0] != "libvirtd" || f[2] != "reused" {
		t.Fatalf("libvirt.sh daemon again: %q", out)
	}
	pid := f[1]
	if comm, err := os.ReadFile("/proc/" + pid + "/comm"); err != nil || strings.TrimSpace(string(comm)) != "libvirtd" {
		t.Fatalf("pid %s is %q (%v)", pid, comm, err)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return // nothing to hide: the script starts libvirtd as it is
	}
	ours, _ := os.Readlink("/proc/self/ns/mnt")
	theirs, err := os.Readlink("/proc/" + pid + "/ns/mnt")
	if err != nil || theirs == ours {
		t.Errorf("libvirtd %s mount namespace %q, ours %q: want a private one", pid, theirs, ours)
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/"+pid+"/root/dev/kvm", &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFCHR && st.Rdev == 10<<8|232 {
		t.Errorf("libvirtd %s sees the host's /dev/kvm", pid)
	}
	if st.Mode&0o777 != 0 {
		t.Errorf("libvirtd %s: its /dev/kvm has mode %o, want 0 (not openable by libvirt-qemu)", pid, st.Mode&0o777)
	}
}
