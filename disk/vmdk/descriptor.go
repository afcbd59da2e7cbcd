package vmdk

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/vmscope/vmscope/disk"
)

// Bounds of the descriptor text.
const (
	maxDescriptor = 1 << 20
	maxLines      = 20000
	maxLine       = 4096
	maxExtents    = 4096
	noParent      = 0xffffffff
)

// Descriptor is the parsed text descriptor of a VMDK (embedded in a sparse
// file or a file of its own).
type Descriptor struct {
	Version    int
	CID        uint32
	ParentCID  uint32 // 0xffffffff: no parent
	CreateType string
	ParentHint string // parentFileNameHint
	Extents    []ExtentLine
}

// ExtentLine is one extent description line.
type ExtentLine struct {
	Access  string // RW, RDONLY or NOACCESS
	Sectors int64
	Type    string // FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, ...
	File    string // "" for ZERO
	Offset  int64  // in sectors, FLAT only
	at      int64  // byte offset of the line in the file
}

// HasParent reports whether the descriptor names a parent.
func (d *Descriptor) HasParent() bool { return d.ParentCID != noParent }

// parseDescriptor parses text, found at byte base of file name. It is
// bounded: at most maxDescriptor bytes, maxLines lines of maxLine bytes
// and maxExtents extents; numbers are checked for range. Lines it does not
// know (the disk database, comments) are skipped.
func parseDescriptor(name string, text []byte, base int64) (*Descriptor, error) {
	if len(text) > maxDescriptor {
		return nil, disk.Corrupt(name, "descriptor", base, "%d bytes (more than %d)", len(text), maxDescriptor)
	}
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i] // an embedded descriptor is padded with NULs
	}
	d := &Descriptor{ParentCID: noParent, Version: 1}
	var sawCID bool
	off := base
	lines := 0
	for len(text) > 0 {
		lines++
		if lines > maxLines {
			return nil, disk.Corrupt(name, "descriptor", base, "more than %d lines", maxLines)
		}
		line := text
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			text = nil
		}
		at := off
		off += int64(len(line)) + 1
		if len(line) > maxLine {
			return nil, disk.Corrupt(name, "descriptor line", at, "%d bytes (more than %d)", len(line), maxLine)
		}
		s := strings.TrimSpace(strings.TrimRight(string(line), "\r"))
		if s == "" || s[0] == '#' {
			continue
		}
		if acc, _, _ := strings.Cut(s, " "); acc == "RW" || acc == "RDONLY" || acc == "NOACCESS" {
			e, err := parseExtentLine(name, s, at)
			if err != nil {
				return nil, err
			}
			if len(d.Extents) >= maxExtents {
				return nil, disk.Corrupt(name, "descriptor extent", at, "more than %d extents", maxExtents)
			}
			d.Extents = append(d.Extents, e)
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		v = strings.Trim(strings.TrimSpace(v), `"`)
		switch k {
		case "version":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 3 {
				return nil, disk.Unsupported(name, "descriptor version", at, "version %q", v)
			}
			d.Version = n
		case "CID":
			n, err := strconv.ParseUint(v, 16, 32)
			if err != nil {
				return nil, disk.Corrupt(name, "descriptor CID", at, "CID %q", v)
			}
			d.CID, sawCID = uint32(n), true
		case "parentCID":
			n, err := strconv.ParseUint(v, 16, 32)
			if err != nil {
				return nil, disk.Corrupt(name, "descriptor parentCID", at, "parentCID %q", v)
			}
			d.ParentCID = uint32(n)
		case "createType":
			d.CreateType = v
		case "parentFileNameHint":
			d.ParentHint = v
		}
	}
	if !sawCID {
		return nil, disk.Corrupt(name, "descriptor", base, "no CID")
	}
	if d.HasParent() && d.ParentHint == "" {
		return nil, disk.Corrupt(name, "descriptor", base, "parentCID %08x without a parentFileNameHint", d.ParentCID)
	}
	return d, nil
}

// parseExtentLine parses `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
func parseExtentLine(name, s string, at int64) (ExtentLine, error) {
	bad := func(why string) (ExtentLine, error) {
		return ExtentLine{}, disk.Corrupt(name, "descriptor extent", at, "%s in %q", why, s)
	}
	e := ExtentLine{at: at}
	var rest string
	e.Access, rest, _ = strings.Cut(s, " ")
	f := strings.Fields(rest)
	if len(f) < 2 {
		return bad("too few fields")
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || n <= 0 || n > maxSectors {
		return bad("sector count")
	}
	e.Sectors, e.Type = n, f[1]
	rest = strings.TrimSpace(rest)
	rest = strings.TrimSpace(rest[len(f[0]):])
	rest = strings.TrimSpace(rest[len(f[1]):])
	if rest == "" {
		if e.Type != "ZERO" {
			return bad("no file name")
		}
		return e, nil
	}
	if rest[0] != '"' {
		return bad("file name not quoted")
	}
	end := strings.IndexByte(rest[1:], '"')
	if end < 0 {
		return bad("unterminated file name")
	}
	e.File = rest[1 : 1+end]
	if e.File == "" {
		return bad("empty file name")
	}
	rest = strings.TrimSpace(rest[2+end:])
	if rest != "" {
		tail := strings.Fields(rest)
		o, err := strconv.ParseInt(tail[0], 10, 64)
		if err != nil || o < 0 || o > maxSectors {
			return bad("extent offset")
		}
		e.Offset = o
	}
	return e, nil
}
