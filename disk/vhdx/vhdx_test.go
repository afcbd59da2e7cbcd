package vhdx_test

import (
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/disktest"
	_ "github.com/vmscope/vmscope/disk/vhdx"
	"github.com/vmscope/vmscope/internal/imgtest"
)

// TestConformance: the dynamic and the fixed VHDX qemu-img wrote read as
// qemu-img convert and allocate as qemu-img map (disktest).
func TestConformance(t *testing.T) {
	for _, name := range []string{"dynamic.vhdx", "fixed.vhdx"} {
		t.Run(name, func(t *testing.T) {
			im, err := disk.Open(imgtest.Path(t, name))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if im.Format() != "vhdx" {
				t.Fatalf("format %s", im.Format())
			}
			disktest.Check(t, im)
		})
	}
}
