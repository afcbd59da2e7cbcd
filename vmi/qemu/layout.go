package qemu

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
)

// The parsers of the text QEMU and the kernel give about a QEMU process:
// HMP "info ramblock", FlatView 0 of HMP "info mtree -f", HMP "gpa2hva"
// and "xp", and /proc/PID/maps. Each is bounded (input size, line count,
// result count) and fails with a *vmerr.FormatError giving the byte
// offset of the line and quoting it.

// Bounds of the layout parsers.
const (
	maxLayoutText = 64 << 20 // bytes of one HMP answer or maps file
	maxLayoutRows = 1 << 16  // RAM blocks, flat-view segments or mappings
)

// flatSeg is a RAM or ROM segment of FlatView 0 (address space "memory"):
// guest-physical [Start, Start+Size) is memory region Name from Offset on.
type flatSeg struct {
	Start, Size uint64
	ROM         bool
	Name        string
	Offset      uint64
}

func layoutErr(input, structure string, off int, err error) error {
	return &vmerr.FormatError{Input: input, Struct: structure, Offset: int64(off), Err: err}
}

func errLine(l string) error {
	if len(l) > 120 {
		l = l[:120] + "…"
	}
	return fmt.Errorf("%w: line %q", ErrMonitor, l)
}

// parseFlatView parses the RAM and ROM segments of the flat view of
// address space "memory" in HMP "info mtree -f".
func parseFlatView(s string) ([]flatSeg, error) {
	const input, st = "info mtree -f", "flat view"
	if len(s) > maxLayoutText {
		return nil, layoutErr(input, st, 0, fmt.Errorf("%w: %d bytes", ErrMonitor, len(s)))
	}
	var out []flatSeg
	inView, found := false, false
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 4096), 1<<20)
	n, at := 0, 0
	for sc.Scan() {
		at, n = n, n+len(sc.Text())+1
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "FlatView "):
			if found {
				return out, nil
			}
			inView = false
		case strings.HasPrefix(l, ` AS "memory",`):
			inView, found = true, true
		case inView && strings.HasPrefix(l, "  "):
			rng, rest, ok := strings.Cut(strings.TrimSpace(l), " (prio ")
			if !ok {
				continue // "No rendered FlatView", root lines
			}
			_, rest, ok = strings.Cut(rest, ", ")
			if !ok {
				return nil, layoutErr(input, st, at, errLine(l))
			}
			kind, name, ok := strings.Cut(rest, "): ")
			if !ok {
				return nil, layoutErr(input, st, at, errLine(l))
			}
			if kind != "ram" && kind != "rom" {
				continue // i/o, romd (device mode), ram device
			}
			lo, hi, ok := strings.Cut(rng, "-")
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if !ok || err1 != nil || err2 != nil || b < a || b-a == ^uint64(0) {
				return nil, layoutErr(input, st, at, errLine(l))
			}
			seg := flatSeg{Start: a, Size: b - a + 1, ROM: kind == "rom"}
			// "NAME [@OFFSET] [KVM]"
			f := strings.Fields(name)
			for i, w := range f {
				if strings.HasPrefix(w, "@") {
					o, err := strconv.ParseUint(w[1:], 16, 64)
					if err != nil {
						return nil, layoutErr(input, st, at, errLine(l))
					}
					seg.Offset = o
					f = f[:i]
					break
				}
			}
			if len(f) > 0 && f[len(f)-1] == "KVM" {
				f = f[:len(f)-1]
			}
			seg.Name = strings.Join(f, " ")
			if len(out) > 0 && out[len(out)-1].Start+out[len(out)-1].Size > seg.Start {
				return nil, layoutErr(input, st, at, fmt.Errorf("%w: segment %#x overlaps the one before", ErrMonitor, seg.Start))
			}
			if len(out) >= maxLayoutRows {
				return nil, layoutErr(input, st, at, fmt.Errorf("%w: more than %d segments", ErrMonitor, maxLayoutRows))
			}
			out = append(out, seg)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, layoutErr(input, st, n, fmt.Errorf("%w: %v", ErrMonitor, err))
	}
	if !found {
		return nil, layoutErr(input, st, n, fmt.Errorf("%w: no flat view of address space \"memory\"", ErrMonitor))
	}
	return out, nil
}

// ramBlock is a row of HMP "info ramblock".
type ramBlock struct {
	Name                string
	PageSize            uint64
	Offset, Used, Total uint64
}

// parseRAMBlocks parses HMP "info ramblock":
//
//	Block Name    PSize              Offset               Used              Total
//	    pc.ram    4 KiB  0x0000000000000000 0x0000000020000000 0x0000000020000000
func parseRAMBlocks(s string) ([]ramBlock, error) {
	const input, st = "info ramblock", "RAM block"
	if len(s) > maxLayoutText {
		return nil, layoutErr(input, st, 0, fmt.Errorf("%w: %d bytes", ErrMonitor, len(s)))
	}
	var out []ramBlock
	header := false
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 4096), 1<<20)
	n, at := 0, 0
	for sc.Scan() {
		at, n = n, n+len(sc.Text())+1
		l := strings.TrimSpace(sc.Text())
		if l == "" {
			continue
		}
		if !header {
			if !strings.HasPrefix(l, "Block Name") {
				return nil, layoutErr(input, st, at, errLine(l))
			}
			header = true
			continue
		}
		f := strings.Fields(l)
		if len(f) < 6 {
			return nil, layoutErr(input, st, at, errLine(l))
		}
		k := len(f)
		var v [3]uint64
		for i := 0; i < 3; i++ {
			x, err := strconv.ParseUint(strings.TrimPrefix(f[k-3+i], "0x"), 16, 64)
			if err != nil {
				return nil, layoutErr(input, st, at, errLine(l))
			}
			v[i] = x
		}
		ps, err := parseSize(f[k-5], f[k-4])
		if err != nil || v[1] > v[2] {
			return nil, layoutErr(input, st, at, errLine(l))
		}
		if len(out) >= maxLayoutRows {
			return nil, layoutErr(input, st, at, fmt.Errorf("%w: more than %d blocks", ErrMonitor, maxLayoutRows))
		}
		out = append(out, ramBlock{Name: strings.Join(f[:k-5], " "), PageSize: ps, Offset: v[0], Used: v[1], Total: v[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, layoutErr(input, st, n, fmt.Errorf("%w: %v", ErrMonitor, err))
	}
	if len(out) == 0 {
		return nil, layoutErr(input, st, n, fmt.Errorf("%w: no RAM block", ErrMonitor))
	}
	return out, nil
}

// parseSize parses "4 KiB", "2 MiB", "1 GiB".
func parseSize(num, unit string) (uint64, error) {
	x, err := strconv.ParseUint(num, 10, 64)
	if err != nil || x == 0 || x > 1<<20 {
		return 0, fmt.Errorf("%w: size %q %q", ErrMonitor, num, unit)
	}
	switch unit {
	case "B":
		return x, nil
	case "KiB":
		return x << 10, nil
	case "MiB":
		return x << 20, nil
	case "GiB":
		return x << 30, nil
	}
	return 0, fmt.Errorf("%w: size unit %q", ErrMonitor, unit)
}

// mapping is a line of /proc/PID/maps.
type mapping struct {
	Start, End   uint64
	Perms        string // "rw-p", "rw-s", ...
	Offset       uint64 // file offset of Start
	Major, Minor uint32
	Inode        uint64
	Path         string // "" for anonymous memory
}

func (m mapping) Size() uint64   { return m.End - m.Start }
func (m mapping) Shared() bool   { return len(m.Perms) == 4 && m.Perms[3] == 's' }
func (m mapping) Readable() bool { return len(m.Perms) == 4 && m.Perms[0] == 'r' }
func (m mapping) Exec() bool     { return len(m.Perms) == 4 && m.Perms[2] == 'x' }

// parseMaps parses /proc/PID/maps.
func parseMaps(b []byte) ([]mapping, error) {
	const input, st = "/proc/PID/maps", "mapping"
	if len(b) > maxLayoutText {
		return nil, layoutErr(input, st, 0, fmt.Errorf("%w: %d bytes", ErrMonitor, len(b)))
	}
	var out []mapping
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 4096), 1<<20)
	n, at := 0, 0
	for sc.Scan() {
		at, n = n, n+len(sc.Text())+1
		l := sc.Text()
		f := strings.SplitN(l, " ", 6)
		if len(f) < 5 {
			return nil, layoutErr(input, st, at, errLine(l))
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		off, err3 := strconv.ParseUint(f[2], 16, 64)
		ma, mi, ok2 := strings.Cut(f[3], ":")
		maj, err4 := strconv.ParseUint(ma, 16, 32)
		min, err5 := strconv.ParseUint(mi, 16, 32)
		ino, err6 := strconv.ParseUint(f[4], 10, 64)
		if !ok || !ok2 || err1 != nil || err2 != nil || err3 != nil || err4 != nil || err5 != nil || err6 != nil || e <= a || len(f[1]) != 4 {
			return nil, layoutErr(input, st, at, errLine(l))
		}
		m := mapping{Start: a, End: e, Perms: f[1], Offset: off, Major: uint32(maj), Minor: uint32(min), Inode: ino}
		if len(f) == 6 {
			m.Path = strings.TrimLeft(f[5], " ")
		}
		if len(out) > 0 && out[len(out)-1].End > m.Start {
			return nil, layoutErr(input, st, at, fmt.Errorf("%w: mapping %#x overlaps or is out of order", ErrMonitor, m.Start))
		}
		if len(out) >= maxLayoutRows*4 {
			return nil, layoutErr(input, st, at, fmt.Errorf("%w: more than %d mappings", ErrMonitor, maxLayoutRows*4))
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, layoutErr(input, st, n, fmt.Errorf("%w: %v", ErrMonitor, err))
	}
	return out, nil
}

// parseGPA2HVA parses HMP "gpa2hva ADDR": "Host virtual address for
// 0x100000 (pc.ram) is 0x7f600c0ff000". ok is false for "... is not RAM".
func parseGPA2HVA(s string) (hva uint64, region string, ok bool, err error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "is not RAM") {
		return 0, "", false, nil
	}
	rest, ok1 := strings.CutPrefix(s, "Host virtual address for ")
	i, j := strings.Index(rest, " ("), strings.LastIndex(rest, ") is 0x")
	if !ok1 || i < 0 || j < i || strings.Contains(rest[j:], "\n") {
		return 0, "", false, fmt.Errorf("%w: gpa2hva: %q", ErrMonitor, trunc([]byte(s)))
	}
	hva, err = strconv.ParseUint(rest[j+len(") is 0x"):], 16, 64)
	if err != nil {
		return 0, "", false, fmt.Errorf("%w: gpa2hva: %q", ErrMonitor, trunc([]byte(s)))
	}
	return hva, rest[i+2 : j], true, nil
}

// parseXP parses HMP "xp /Ngx ADDR": lines of "ADDR: 0xWORD 0xWORD",
// starting at addr, into little-endian bytes.
func parseXP(s string, addr uint64, words int) ([]byte, error) {
	out := make([]byte, 0, words*8)
	next := addr
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		a, rest, ok := strings.Cut(strings.TrimSpace(l), ":")
		x, err := strconv.ParseUint(a, 16, 64)
		if !ok || err != nil || x != next {
			return nil, fmt.Errorf("%w: xp line %q", ErrMonitor, trunc([]byte(l)))
		}
		for _, w := range strings.Fields(rest) {
			v, err := strconv.ParseUint(strings.TrimPrefix(w, "0x"), 16, 64)
			if err != nil || len(out) >= words*8 {
				return nil, fmt.Errorf("%w: xp line %q", ErrMonitor, trunc([]byte(l)))
			}
			for k := 0; k < 8; k++ {
				out = append(out, byte(v>>(8*k)))
			}
			next += 8
		}
	}
	if len(out) != words*8 {
		return nil, fmt.Errorf("%w: xp gave %d bytes, want %d", ErrMonitor, len(out), words*8)
	}
	return out, nil
}
