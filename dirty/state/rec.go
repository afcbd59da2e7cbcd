package state

import (
	"encoding/binary"
	"errors"
	"io/fs"

	"github.com/vmscope/vmscope/dirty"
)

var errBad = errors.New("state: malformed record")

const recVersion = 1

// encodeRec writes a file record as varints and length-prefixed strings.
func encodeRec(r *dirty.FileRec) []byte {
	b := make([]byte, 0, 128+len(r.Target)+len(r.SHA256)+16*len(r.Runs)+24*len(r.Names))
	b = append(b, recVersion)
	for _, u := range []uint64{uint64(r.Ino), uint64(r.Mode), uint64(r.Uid), uint64(r.Gid), r.Size,
		uint64(r.Links), uint64(r.Flags), uint64(r.Gen), r.Xattr, r.Extents} {
		b = binary.AppendUvarint(b, u)
	}
	for _, t := range []int64{r.Atime, r.Mtime, r.Ctime, r.Crtime} {
		b = binary.AppendVarint(b, t)
	}
	for _, s := range []string{r.Target, r.SHA256, r.Verdict, r.ReadErr} {
		b = appendStr(b, s)
	}
	if r.Inline {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(r.Runs)))
	for _, run := range r.Runs {
		b = binary.AppendUvarint(b, run.Start)
		b = binary.AppendUvarint(b, run.Len)
		b = appendStr(b, string(run.Kind))
	}
	b = binary.AppendUvarint(b, uint64(len(r.Names)))
	for _, l := range r.Names {
		b = binary.AppendUvarint(b, uint64(l.Parent))
		b = appendStr(b, l.Name)
	}
	return b
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

type dec struct {
	b   []byte
	bad bool
}

func (d *dec) u() uint64 {
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.bad, d.b = true, nil
		return 0
	}
	d.b = d.b[n:]
	return x
}

// i reads a varint: the zig-zag encoding of binary.AppendVarint over u.
func (d *dec) i() int64 {
	x := d.u()
	return int64(x>>1) ^ -int64(x&1)
}

func (d *dec) s() string {
	n := d.u()
	if n > uint64(len(d.b)) {
		d.bad, d.b = true, nil
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// count reads a list length, capped by the bytes left (every element
// takes at least two).
func (d *dec) count() int {
	n := d.u()
	if n > uint64(len(d.b))/2 {
		d.bad, d.b = true, nil
		return 0
	}
	return int(n)
}

func decodeRec(v []byte) (*dirty.FileRec, error) {
	if len(v) == 0 || v[0] != recVersion {
		return nil, errBad
	}
	d := &dec{b: v[1:]}
	r := &dirty.FileRec{}
	r.Ino, r.Mode, r.Uid, r.Gid = uint32(d.u()), fs.FileMode(d.u()), uint32(d.u()), uint32(d.u())
	r.Size, r.Links, r.Flags, r.Gen = d.u(), uint16(d.u()), uint32(d.u()), uint32(d.u())
	r.Xattr, r.Extents = d.u(), d.u()
	r.Atime, r.Mtime, r.Ctime, r.Crtime = d.i(), d.i(), d.i(), d.i()
	r.Target, r.SHA256, r.Verdict, r.ReadErr = d.s(), d.s(), d.s(), d.s()
	if len(d.b) == 0 {
		return nil, errBad
	}
	r.Inline, d.b = d.b[0] == 1, d.b[1:]
	if n := d.count(); n > 0 {
		r.Runs = make([]dirty.Run, n)
		for i := range r.Runs {
			r.Runs[i] = dirty.Run{Start: d.u(), Len: d.u(), Kind: dirty.Kind(d.s())}
		}
	}
	if n := d.count(); n > 0 {
		r.Names = make([]dirty.Link, n)
		for i := range r.Names {
			r.Names[i] = dirty.Link{Parent: uint32(d.u()), Name: d.s()}
		}
	}
	if d.bad || len(d.b) != 0 {
		return nil, errBad
	}
	return r, nil
}
