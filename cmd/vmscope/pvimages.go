package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/qcow"
)

// The --pv-image disks of one run: other disk images of the same machine
// whose LVM physical volumes join the volume groups of IMAGE, so that a
// logical volume spanning disks can be read. The flag belongs to the root
// command (every disk command takes it); newRoot binds it afresh, and run
// closes what openDisk opened.
var (
	pvImages []string
	pvOpened []*disk.Image
)

func addPVImageFlag(root *cobra.Command) {
	root.PersistentFlags().StringArrayVar(&pvImages, "pv-image", nil,
		"another disk image of the same machine whose LVM physical volumes join IMAGE's volume groups (repeatable; read-only)")
}

// pvDiskOptions opens the --pv-image disks read-only.
func pvDiskOptions() ([]fsparse.Option, error) {
	var disks []fsparse.PVDisk
	for _, p := range pvImages {
		im, err := qcow.Open(p)
		if err != nil {
			return nil, fmt.Errorf("--pv-image %s: %w", p, err)
		}
		pvOpened = append(pvOpened, im)
		disks = append(disks, fsparse.PVDisk{Name: p, R: im, Size: im.Size()})
	}
	if len(disks) == 0 {
		return nil, nil
	}
	return []fsparse.Option{fsparse.WithPVDisks(disks...)}, nil
}

// closePVImages closes the --pv-image disks at the end of a run.
func closePVImages() error {
	var errs []error
	for _, im := range pvOpened {
		errs = append(errs, im.Close())
	}
	pvOpened = nil
	return errors.Join(errs...)
}
