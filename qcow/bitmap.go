package qcow

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/vmscope/vmscope/vmerr"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// ErrBitmapInUse: a persistent dirty bitmap has the in_use flag. QEMU sets
// it when it opens the image read-write and clears it when it stores the
// bitmap on a clean close; a bitmap still flagged means QEMU has the image
// open now, or crashed with it open, and its content is inconsistent (writes
// since it was loaded are missing). It must never be trusted.
var ErrBitmapInUse = errors.New("bitmap in use (inconsistent)")

// ErrNoBitmap: the image has no persistent bitmap of that name.
var ErrNoBitmap = vmerr.New("no such bitmap", vmerr.ErrNotPresent)

// Bitmap table entry bits (docs/interop/qcow2.txt, "Bitmap table").
const (
	bmtOffsetMask   = 0x00fffffffffffe00
	bmtReservedMask = 0xff000000000001fe
	bmtAllOnes      = 1 << 0
)

// Bitmap returns the bitmap called name of the layer.
func (l *Layer) Bitmap(name string) (BitmapInfo, bool) {
	for _, b := range l.Bitmaps {
		if b.Name == name {
			return b, true
		}
	}
	return BitmapInfo{}, false
}

// BitmapDirty reads the content of the persistent dirty bitmap called name
// in this (qcow2) layer and returns the guest byte ranges it marks dirty:
// each set bit stands for Granularity bytes, and the last one is clipped to
// the virtual size. A bitmap with the in_use flag is refused with
// ErrBitmapInUse. The table and every data cluster it points to are checked
// (cluster aligned, inside the file, reserved bits clear, the table size
// the virtual size implies) before anything is read; reads are bounded by
// one cluster at a time.
func (l *Layer) BitmapDirty(ctx context.Context, name string) (rangeset.Set, error) {
	b, ok := l.Bitmap(name)
	if !ok {
		names := make([]string, len(l.Bitmaps))
		for i, x := range l.Bitmaps {
			names[i] = x.Name
		}
		return rangeset.Set{}, &Error{Path: l.Path, What: "bitmap " + name, Offset: -1,
			Err: fmt.Errorf("%w (the image has %d: %q; add one with `qemu-img bitmap --add --enable IMG NAME` while the VM is stopped, or QMP block-dirty-bitmap-add with persistent=true)", ErrNoBitmap, len(names), names)}
	}
	if l.h == nil {
		return rangeset.Set{}, unsupported(l.Path, "bitmap "+name, -1, "not a qcow2 layer")
	}
	return readBitmap(ctx, l.Path, l.f, l.h.fileSize, l.h.clusterSize, int64(l.h.size), b)
}

// checkBitmapUsable refuses a bitmap that cannot be trusted.
func checkBitmapUsable(path string, b BitmapInfo) error {
	if b.InUse {
		return &Error{Path: path, What: "bitmap " + b.Name, Offset: b.DirOffset,
			Err: fmt.Errorf("%w: the in_use flag is set, so QEMU has the image open now or crashed while it was open, and writes since it was loaded are missing from the file; "+
				"stop the VM cleanly (QEMU stores the bitmap and clears the flag) and poll again, or if QEMU crashed drop it with `qemu-img bitmap --remove %s %s`, add a fresh one, and take one full poll", ErrBitmapInUse, path, b.Name)}
	}
	if b.Type != 1 {
		return unsupported(path, "bitmap "+b.Name, b.DirOffset, "bitmap type %d (only 1, dirty tracking, is defined)", b.Type)
	}
	if b.Granularity < 1<<minGranularity || b.Granularity > 1<<maxGranularity || b.Granularity&(b.Granularity-1) != 0 {
		return corrupt(path, "bitmap "+b.Name, b.DirOffset, "granularity %d", b.Granularity)
	}
	return nil
}

// readBitmap reads the bitmap table of b and its data clusters from f, a
// qcow2 file of fileSize bytes with clusters of cs bytes and a guest disk
// of size bytes.
func readBitmap(ctx context.Context, path string, f readerAt, fileSize, cs, size int64, b BitmapInfo) (rangeset.Set, error) {
	if err := checkBitmapUsable(path, b); err != nil {
		return rangeset.Set{}, err
	}
	if cs < 1<<minClusterBits || cs > maxClusterSize || cs&(cs-1) != 0 || size < 0 || size > maxVirtualSize || fileSize < 0 {
		return rangeset.Set{}, corrupt(path, "bitmap "+b.Name, b.DirOffset, "cluster size %d, disk size %d", cs, size)
	}
	gran := b.Granularity
	bits := (size + gran - 1) / gran                     // one bit per granule
	bitsPerCluster := cs * 8                             // bits in one data cluster
	want := (bits + bitsPerCluster - 1) / bitsPerCluster // table entries
	if int64(b.TableSize) != want {
		return rangeset.Set{}, corrupt(path, "bitmap table of "+b.Name, b.TableOffset, "%d entries, a %d-byte disk at granularity %d needs %d", b.TableSize, size, gran, want)
	}
	tsize := want * 8
	if b.TableOffset < 0 || b.TableOffset%cs != 0 || b.TableOffset > fileSize || fileSize-b.TableOffset < tsize {
		return rangeset.Set{}, corrupt(path, "bitmap table of "+b.Name, b.TableOffset, "%d entries not cluster aligned or not inside the %d-byte file", want, fileSize)
	}
	var set rangeset.Set
	perEntry := bitsPerCluster * gran // guest bytes per table entry (<= 2^21*8*2^31 = 2^55)
	tbuf := make([]byte, min(tsize, cs))
	data := make([]byte, cs)
	be := binary.BigEndian
	for t := int64(0); t < want; t++ {
		if t*8%int64(len(tbuf)) == 0 { // next chunk of the table
			if err := ctx.Err(); err != nil {
				return rangeset.Set{}, err
			}
			n := min(int64(len(tbuf)), tsize-t*8)
			if _, err := f.ReadAt(tbuf[:n], b.TableOffset+t*8); err != nil {
				return rangeset.Set{}, &Error{Path: path, What: "bitmap table of " + b.Name, Offset: b.TableOffset + t*8, Err: err}
			}
		}
		at := b.TableOffset + t*8
		e := be.Uint64(tbuf[t*8%int64(len(tbuf)):])
		if e&bmtReservedMask != 0 {
			return rangeset.Set{}, corrupt(path, "bitmap table entry of "+b.Name, at, "entry %d %#x has reserved bits set", t, e)
		}
		base := t * perEntry
		end := min(base+perEntry, size)
		off := e & bmtOffsetMask
		if off == 0 {
			if e&bmtAllOnes != 0 {
				set.Add(base, end)
			}
			continue
		}
		if e&bmtAllOnes != 0 {
			return rangeset.Set{}, corrupt(path, "bitmap table entry of "+b.Name, at, "entry %d %#x: all-ones bit with a data cluster offset", t, e)
		}
		if off%uint64(cs) != 0 || off > uint64(fileSize) || uint64(fileSize)-off < uint64(cs) {
			return rangeset.Set{}, corrupt(path, "bitmap table entry of "+b.Name, at, "entry %d: data cluster at %#x not aligned or past the end of the %d-byte file", t, off, fileSize)
		}
		if _, err := f.ReadAt(data, int64(off)); err != nil {
			return rangeset.Set{}, &Error{Path: path, What: "bitmap data cluster of " + b.Name, Offset: int64(off), Err: err}
		}
		addBits(&set, data, base, gran, size)
	}
	return set, nil
}

// addBits adds the granules whose bits are set in data (bit i of byte j is
// granule 8j+i, least significant bit first, as QEMU serialises bitmaps) to
// set, starting at guest offset base and clipped to size.
func addBits(set *rangeset.Set, data []byte, base, gran, size int64) {
	for j, c := range data {
		if c == 0 {
			continue
		}
		g0 := base + int64(j)*8*gran
		if g0 >= size {
			return
		}
		if c == 0xff {
			set.Add(g0, min(g0+8*gran, size))
			continue
		}
		for i := int64(0); i < 8; i++ {
			if c&(1<<i) != 0 {
				s := g0 + i*gran
				if s >= size {
					return
				}
				set.Add(s, min(s+gran, size))
			}
		}
	}
}
