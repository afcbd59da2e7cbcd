package fsparse

import (
	"fmt"
	"io"
	"strings"

	"github.com/vmscope/vmscope/fsparse/luks"
	"github.com/vmscope/vmscope/fsparse/lvm"
	"github.com/vmscope/vmscope/vmerr"
)

// ErrEncrypted: a volume is encrypted (LUKS, BitLocker); it is reported,
// not scanned.
var ErrEncrypted = vmerr.New("encrypted, not scanned", vmerr.ErrUnsupported)

// Encrypted is an encrypted volume: where it is and what its header says.
type Encrypted struct {
	ID     string       `json:"id"`     // "p3", "disk" or "vg/lv"
	Offset int64        `json:"offset"` // its first byte on the disk
	Size   int64        `json:"size"`
	Header *luks.Header `json:"header"`
}

// PV is an LVM physical volume found on the disk (or on another disk of
// the machine, passed with WithPVDisks).
type PV struct {
	ID    string  `json:"id"`              // the partition, "p2", or "disk"
	Image string  `json:"image,omitempty"` // the other disk's name; "" for this disk
	PV    *lvm.PV `json:"pv"`
}

// Option configures Open.
type Option func(*options)

type options struct{ pvDisks []PVDisk }

// PVDisk is another disk image of the same machine: the LVM physical
// volumes on it join the volume groups of the disk being opened, so that
// an LV that spans disks can be read.
type PVDisk struct {
	Name string // how the disk is named in PV and segment locations
	R    io.ReaderAt
	Size int64
}

// WithPVDisks adds the physical volumes of the machine's other disks.
// Their filesystems are not opened (open each disk for that); an LV with
// segments on them is read through them, and its Segments name them.
func WithPVDisks(disks ...PVDisk) Option {
	return func(o *options) { o.pvDisks = append(o.pvDisks, disks...) }
}

// addPVDisk reads the PVs of another disk of the machine.
func (d *Disk) addPVDisk(pd PVDisk) {
	t, err := readTable(pd.R, pd.Size)
	if err != nil {
		d.Problems = append(d.Problems, vmerr.Problem{Where: pd.Name, Offset: 0, Err: err})
		return
	}
	for _, p := range t.Partitions {
		dev := io.NewSectionReader(pd.R, p.Start, p.Size)
		if !lvm.HasLabel(dev) {
			continue
		}
		where := pd.Name + ":" + p.ID()
		pv, err := lvm.ReadPV(dev, p.Size, where)
		if err != nil {
			d.Problems = append(d.Problems, vmerr.Problem{Where: where, Offset: p.Start, Err: err})
			continue
		}
		pv.Base = p.Start
		d.PVs = append(d.PVs, PV{ID: p.ID(), Image: pd.Name, PV: pv})
	}
}

// encryptedProblem is the problem that makes an encrypted volume visible
// in every command's summary and exit status.
func encryptedProblem(e Encrypted) vmerr.Problem {
	h := e.Header
	what := h.Kind
	if h.UUID != "" {
		what += " " + h.UUID
	}
	if h.Kind != "BitLocker" {
		what += fmt.Sprintf(" (%s, %d-bit key, %d active keyslots)", h.CipherSpec(), h.KeyBits, h.Active())
	}
	return vmerr.Problem{Where: e.ID, Offset: e.Offset, Err: fmt.Errorf("%s: %w", what, ErrEncrypted)}
}

// probeEncrypted reads the header of an encrypted volume at dev, or
// returns nil, nil when dev is not one.
func probeEncrypted(dev io.ReaderAt, size int64) (*luks.Header, error) {
	head := make([]byte, 512)
	if n, _ := dev.ReadAt(head, 0); n < len(head) || luks.Probe(head) == "" {
		return nil, nil
	}
	return luks.Read(dev, size)
}

// openSpecial recognises what is no filesystem but holds volumes: an LVM
// PV (added to d.PVs) or an encrypted volume (added to d.Encrypted, and a
// problem). It reports whether the partition was one of them.
func (d *Disk) openSpecial(r io.ReaderAt, p Partition) bool {
	dev := io.NewSectionReader(r, p.Start, p.Size)
	if lvm.HasLabel(dev) {
		pv, err := lvm.ReadPV(dev, p.Size, p.ID())
		if err != nil {
			d.Problems = append(d.Problems, vmerr.Problem{Where: p.ID(), Offset: p.Start, Err: err})
			return true
		}
		pv.Base = p.Start
		d.PVs = append(d.PVs, PV{ID: p.ID(), PV: pv})
		return true
	}
	return d.checkEncrypted(dev, p.ID(), p.Start, p.Size)
}

// checkEncrypted records dev as an encrypted volume when it is one.
func (d *Disk) checkEncrypted(dev io.ReaderAt, id string, off, size int64) bool {
	h, err := probeEncrypted(dev, size)
	if h == nil && err == nil {
		return false
	}
	if err != nil {
		d.Problems = append(d.Problems, vmerr.Problem{Where: id, Offset: off, Err: fmt.Errorf("encrypted volume header: %w", err)})
		return true
	}
	e := Encrypted{ID: id, Offset: off, Size: size, Header: h}
	d.Encrypted = append(d.Encrypted, e)
	d.Problems = append(d.Problems, encryptedProblem(e))
	return true
}

// openLVM assembles the volume groups of the PVs found and opens the
// filesystem of every visible LV. An LV that cannot be read (unsupported
// type, missing PV) or holds nothing known is a problem, so no LV is left
// out silently.
func (d *Disk) openLVM(r io.ReaderAt) {
	pvs := make([]*lvm.PV, len(d.PVs))
	image := map[*lvm.PV]string{}
	for i, p := range d.PVs {
		pvs[i] = p.PV
		image[p.PV] = p.Image
	}
	vgs, probs := lvm.Assemble(pvs)
	d.Problems = append(d.Problems, probs...)
	d.VGs = vgs
	for _, vg := range vgs {
		for _, lv := range vg.LVs {
			if !lv.Visible {
				continue
			}
			id := vg.Name + "/" + lv.Name
			runs, err := lv.Map()
			if err != nil {
				d.Problems = append(d.Problems, vmerr.Problem{Where: id, Offset: -1, Err: err})
				continue
			}
			segs := make([]Segment, len(runs))
			for i, run := range runs {
				segs[i] = Segment{Off: run.Off, DiskOff: run.PV.Base + run.PVOff, Len: run.Len, Image: image[run.PV]}
			}
			lr, _ := lv.Open()
			dev := io.NewSectionReader(lr, 0, lv.Size)
			if d.checkEncrypted(dev, id, segs[0].DiskOff, lv.Size) {
				continue
			}
			f, kind, err := detect(dev, 0)
			switch {
			case err != nil:
				err = fmt.Errorf("probing the filesystem of LV %s: %w", id, err)
			case f == nil && kind == "":
				err = fmt.Errorf("LV %s: no filesystem recognised: %w", id, ErrUnsupported)
			case f == nil:
				err = fmt.Errorf("LV %s: %s: %w", id, kind, ErrUnsupported)
			}
			if err != nil {
				d.Problems = append(d.Problems, vmerr.Problem{Where: id, Offset: segs[0].DiskOff, Err: err})
				continue
			}
			fsys, err := f.Open(dev, lv.Size)
			if err != nil {
				d.Problems = append(d.Problems, vmerr.Problem{Where: id, Offset: segs[0].DiskOff, Err: err})
				continue
			}
			v := &Volume{ID: id, Partition: Partition{Index: -1, Start: segs[0].DiskOff, Size: lv.Size, Type: "lvm", TypeName: "LVM2 logical volume", Name: id},
				Device: dev, FS: fsys, Segments: segs}
			in := fsys.Info()
			v.Type, v.Label, v.UUID, v.BlockSize = in.Type, in.Label, in.UUID, in.BlockSize
			v.Blocks, v.Inodes, v.Features = in.Blocks, in.Inodes, in.Features
			d.Volumes = append(d.Volumes, v)
		}
	}
}

// OnOtherDisks reports whether some of the volume's bytes lie on another
// disk of the machine (an LV spanning disks): the dirty ranges of this
// disk alone do not cover it.
func (v *Volume) OnOtherDisks() bool {
	for _, s := range v.Segments {
		if s.Image != "" {
			return true
		}
	}
	return false
}

// lvError says why the LV named id ("vg/lv") is no volume, or nil when the
// disk has no such LV.
func (d *Disk) lvError(id string) error {
	vgName, lvName, ok := strings.Cut(id, "/")
	if !ok {
		return nil
	}
	for _, vg := range d.VGs {
		if vg.Name != vgName {
			continue
		}
		if lv := vg.LV(lvName); lv != nil {
			if lv.Err != nil {
				return lv.Err
			}
			for _, e := range d.Encrypted {
				if e.ID == id {
					return encryptedProblem(e)
				}
			}
			return fmt.Errorf("LV %s holds no filesystem this tool reads", id)
		}
	}
	return nil
}
