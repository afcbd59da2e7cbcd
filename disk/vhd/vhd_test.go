package vhd_test

import (
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/disktest"
	_ "github.com/vmscope/vmscope/disk/vhd"
	"github.com/vmscope/vmscope/internal/imgtest"
)

// TestConformance: the dynamic and the fixed VHD qemu-img wrote read as
// qemu-img convert and allocate as qemu-img map (disktest).
func TestConformance(t *testing.T) {
	for _, name := range []string{"dynamic.vhd", "fixed.vhd", "chs.vhd"} {
		t.Run(name, func(t *testing.T) {
			im, err := disk.Open(imgtest.Path(t, name))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if im.Format() != "vpc" {
				t.Fatalf("format %s", im.Format())
			}
			disktest.Check(t, im)
		})
	}
}

// TestSleuthKit: the Sleuth Kit (libvhdi) as a second reader.
func TestSleuthKit(t *testing.T) {
	for _, name := range []string{"dynamic.vhd", "fixed.vhd"} {
		t.Run(name, func(t *testing.T) {
			im, err := disk.Open(imgtest.Path(t, name))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			imgtest.SleuthKit(t, im, "vhd")
		})
	}
}
