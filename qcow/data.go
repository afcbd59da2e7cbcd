package qcow

import (
	"context"
	"errors"
	"syscall"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// Linux lseek(2) whence values that find data and holes in a sparse file.
const (
	seekData = 3
	seekHole = 4
)

// DataRanges returns guest byte ranges outside which the disk reads as
// zeros: the union of what every layer may hold (a qcow2 layer's allocated
// clusters, a raw layer's data as lseek SEEK_DATA/SEEK_HOLE finds it: its
// holes read as zeros). It may say more than there is (a filesystem that
// does not report holes makes a raw layer all data), never less. A reader
// of the whole disk (the block-hash index) skips the rest.
func (im *Image) DataRanges(ctx context.Context) (rangeset.Set, error) {
	var out rangeset.Set
	for _, l := range im.layers {
		var s rangeset.Set
		var err error
		if l.Format == Raw {
			s = l.rawData()
		} else if s, err = l.Allocated(ctx); err != nil {
			return out, err
		}
		out = rangeset.Union(out, s)
	}
	return out.Clip(0, im.Size()), nil
}

// rawData finds the data ranges of a raw layer with SEEK_DATA/SEEK_HOLE;
// when the file system does not support them, all of the layer.
func (l *Layer) rawData() rangeset.Set {
	var s rangeset.Set
	all := func() rangeset.Set {
		var a rangeset.Set
		a.Add(0, l.VirtualSize)
		return a
	}
	conn, err := l.f.SyscallConn()
	if err != nil {
		return all()
	}
	var serr error
	err = conn.Control(func(fd uintptr) {
		for off := int64(0); off < l.VirtualSize; {
			d, err := syscall.Seek(int(fd), off, seekData)
			if errors.Is(err, syscall.ENXIO) {
				return // no data from off to the end
			}
			if err != nil {
				serr = err
				return
			}
			h, err := syscall.Seek(int(fd), d, seekHole)
			if err != nil || h <= d {
				serr = errors.New("SEEK_HOLE did not move forward")
				return
			}
			s.Add(d, min(h, l.VirtualSize))
			off = h
		}
	})
	if err != nil || serr != nil {
		return all()
	}
	return s
}
