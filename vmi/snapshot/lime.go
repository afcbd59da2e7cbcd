package snapshot

import (
	"errors"
	"fmt"
	"io"

	"github.com/vmscope/vmscope/vmi"
)

// LiME: a sequence of ranges, each a 32-byte header (magic 0x4C694D45
// "EMiL", version 1, s_addr, e_addr inclusive, 8 reserved bytes) followed by
// e_addr-s_addr+1 bytes of memory.
const (
	limeMagic      = 0x4C694D45
	limeHeaderSize = 32
)

func (s *Snapshot) openLiME() error {
	var segs []segment
	var h [limeHeaderSize]byte
	for pos := int64(0); pos < s.size; {
		if _, err := s.r.ReadAt(h[:], pos); err != nil {
			return fmt.Errorf("snapshot: LiME range header at offset %#x: %v: %w", pos, err, ErrCorrupt)
		}
		if m := le.Uint32(h[:]); m != limeMagic {
			return fmt.Errorf("snapshot: LiME range header at offset %#x: magic %#x: %w", pos, m, ErrCorrupt)
		}
		if v := le.Uint32(h[4:]); v != 1 {
			return fmt.Errorf("snapshot: LiME range header at offset %#x: version %d: %w", pos, v, ErrUnsupported)
		}
		start, end := le.Uint64(h[8:]), le.Uint64(h[16:])
		if end < start || end-start == 1<<64-1 {
			return fmt.Errorf("snapshot: LiME range header at offset %#x: range %#x-%#x: %w", pos, start, end, ErrCorrupt)
		}
		n := end - start + 1
		data := pos + limeHeaderSize
		if uint64(s.size-data) < n || data > s.size {
			return fmt.Errorf("snapshot: LiME range %#x-%#x at offset %#x: %d bytes past the end of the file: %w", start, end, pos, n, ErrCorrupt)
		}
		if len(segs) >= maxSegments {
			return fmt.Errorf("snapshot: LiME has more than %d ranges: %w", maxSegments, ErrUnsupported)
		}
		segs = append(segs, segment{start: vmi.PA(start), size: n, off: data, fileSize: n})
		pos = data + int64(n)
	}
	return s.addSegments(segs, "LiME range")
}

// WriteLiME writes the present ranges of m as a LiME file.
func WriteLiME(w io.Writer, m vmi.Memory) error {
	for _, r := range m.Ranges() {
		if r.Size == 0 {
			continue
		}
		var h [limeHeaderSize]byte
		le.PutUint32(h[:], limeMagic)
		le.PutUint32(h[4:], 1)
		le.PutUint64(h[8:], uint64(r.Start))
		le.PutUint64(h[16:], uint64(r.Start)+r.Size-1)
		if _, err := w.Write(h[:]); err != nil {
			return err
		}
		if err := copyRange(w, m, r.Start, r.Size); err != nil {
			return err
		}
	}
	return nil
}

// WriteRaw writes m as a flat image from address 0 to the end of its last
// range; holes, which a raw image cannot tell apart, become zeros (skipped
// with Seek, so sparse, when w is an io.Seeker such as an *os.File).
func WriteRaw(w io.Writer, m vmi.Memory) error {
	var at vmi.PA
	zero := make([]byte, 1<<16)
	seeker, _ := w.(io.Seeker)
	for _, r := range m.Ranges() {
		if seeker != nil && at < r.Start {
			if _, err := seeker.Seek(int64(r.Start-at), io.SeekCurrent); err != nil {
				return err
			}
			at = r.Start
		}
		for at < r.Start {
			n := min(uint64(r.Start-at), uint64(len(zero)))
			if _, err := w.Write(zero[:n]); err != nil {
				return err
			}
			at += vmi.PA(n)
		}
		if err := copyRange(w, m, r.Start, r.Size); err != nil {
			return err
		}
		at = r.End()
	}
	return nil
}

func copyRange(w io.Writer, m vmi.Memory, start vmi.PA, size uint64) error {
	buf := make([]byte, 1<<20)
	for done := uint64(0); done < size; {
		n := min(size-done, uint64(len(buf)))
		got, err := m.ReadAt(buf[:n], int64(start)+int64(done))
		if uint64(got) < n {
			if err == nil {
				err = errors.New("short read")
			}
			return fmt.Errorf("snapshot: reading guest-physical %#x: %w", uint64(start)+done, err)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		done += n
	}
	return nil
}
