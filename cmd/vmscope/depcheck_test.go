package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestReadOnlyPackagesDoNotLinkGuestWriters keeps the read-only analyses
// (images, filesystems, scanning, dirty tracking, snapshot introspection)
// from linking the packages that can write to a live guest's memory or
// registers: only the commands that attach to a guest do.
func TestReadOnlyPackagesDoNotLinkGuestWriters(t *testing.T) {
	const mod = "github.com/vmscope/vmscope/"
	writers := []string{mod + "vmi/qemu", mod + "vmi/libvmi"}
	readOnly := []string{"qcow", "fsparse", "fsparse/ext4", "scan", "cow", "dirty", "dirty/state", "vmi", "vmi/snapshot", "vmi/linux"}
	for _, p := range readOnly {
		out, err := exec.Command("go", "list", "-deps", mod+p).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", p, err)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 2 {
			t.Fatalf("go list -deps %s listed %d packages", p, len(deps))
		}
		for _, d := range deps {
			for _, w := range writers {
				if d == w {
					t.Errorf("%s links %s, which writes to live guests", p, w)
				}
			}
		}
	}
}
