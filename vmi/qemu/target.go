package qemu

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"sort"
	"strconv"
)

// Reg is a register as the stub's target description declares it.
type Reg struct {
	Name   string
	Num    int // the number 'p' and 'P' take
	Bits   int
	Offset int // byte offset in the 'g' block; -1 when past it (read with 'p')
}

// Target is the stub's register layout, from qXfer:features:read.
type Target struct {
	Arch   string
	Regs   []Reg // by number
	byName map[string]int
}

// Reg returns the register called name (as in the XML: "rip", "cr3",
// "fs_base", "efer").
func (t *Target) Reg(name string) (Reg, bool) {
	i, ok := t.byName[name]
	if !ok {
		return Reg{}, false
	}
	return t.Regs[i], true
}

// Bounds on the target description, which the stub sends.
const (
	maxXMLBytes    = 1 << 20
	maxXMLIncludes = 32
	maxRegs        = 4096
	maxRegBits     = 4096
)

// ReadTarget reads target.xml and the documents it includes and numbers
// the registers as GDB does: a reg takes its regnum attribute, else the
// number after the previous one.
func (g *GDB) ReadTarget(ctx context.Context, thread int) (*Target, error) {
	fetch := func(annex string) ([]byte, error) { return g.readXfer(ctx, "features", annex) }
	t, err := parseTarget("target.xml", fetch)
	if err != nil {
		return nil, fmt.Errorf("qemu: gdb target description: %w", err)
	}
	// The 'g' block holds the registers in number order up to its length.
	blk, err := g.ReadRegisters(ctx, thread)
	if err != nil {
		return nil, err
	}
	off := 0
	for i := range t.Regs {
		r := &t.Regs[i]
		if off >= 0 && off+r.Bits/8 <= len(blk) && (i == 0 || t.Regs[i-1].Num+1 == r.Num) {
			r.Offset = off
			off += r.Bits / 8
		} else {
			r.Offset, off = -1, -1
		}
	}
	return t, nil
}

func (g *GDB) readXfer(ctx context.Context, object, annex string) ([]byte, error) {
	var out []byte
	chunk := (g.packetSize - 8) / 2
	for len(out) <= maxXMLBytes {
		q := fmt.Sprintf("qXfer:%s:read:%s:%x,%x", object, annex, len(out), chunk)
		r, err := g.Command(ctx, q)
		if err != nil {
			return nil, err
		}
		if err := checkReply(q, r); err != nil {
			return nil, fmt.Errorf("%s: %w", annex, err)
		}
		switch r[0] {
		case 'l':
			return append(out, r[1:]...), nil
		case 'm':
			if len(r) == 1 {
				return nil, fmt.Errorf("%w: %s: empty 'm' chunk", ErrProtocol, annex)
			}
			out = append(out, r[1:]...)
		default:
			return nil, fmt.Errorf("%w: %s: reply %q", ErrProtocol, annex, trunc(r))
		}
	}
	return nil, fmt.Errorf("%w: %s longer than %d bytes", ErrProtocol, annex, maxXMLBytes)
}

// parseTarget parses a target description, fetching includes with fetch.
func parseTarget(root string, fetch func(annex string) ([]byte, error)) (*Target, error) {
	t := &Target{byName: map[string]int{}}
	next, docs := 0, 0
	var walk func(annex string, depth int) error
	walk = func(annex string, depth int) error {
		if docs++; docs > maxXMLIncludes || depth > 4 {
			return fmt.Errorf("%w: too many or too deep includes at %s", ErrProtocol, annex)
		}
		b, err := fetch(annex)
		if err != nil {
			return err
		}
		d := xml.NewDecoder(bytes.NewReader(b))
		d.Strict = false
		for {
			tok, err := d.Token()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%w: %s: %v", ErrProtocol, annex, err)
			}
			switch e := tok.(type) {
			case xml.StartElement:
				switch e.Name.Local {
				case "architecture":
					var s string
					if err := d.DecodeElement(&s, &e); err != nil {
						return fmt.Errorf("%w: %s: %v", ErrProtocol, annex, err)
					}
					t.Arch = s
				case "include":
					if href := attr(e, "href"); href != "" {
						if err := walk(href, depth+1); err != nil {
							return err
						}
					}
				case "reg":
					r := Reg{Name: attr(e, "name"), Num: next}
					if v := attr(e, "regnum"); v != "" {
						n, err := strconv.Atoi(v)
						if err != nil || n < 0 || n >= maxRegs {
							return fmt.Errorf("%w: %s: reg %s regnum %q", ErrProtocol, annex, r.Name, v)
						}
						r.Num = n
					}
					bits, err := strconv.Atoi(attr(e, "bitsize"))
					if err != nil || bits <= 0 || bits > maxRegBits || bits%8 != 0 {
						return fmt.Errorf("%w: %s: reg %s bitsize %q", ErrProtocol, annex, r.Name, attr(e, "bitsize"))
					}
					r.Bits = bits
					if r.Name == "" || len(t.Regs) >= maxRegs {
						return fmt.Errorf("%w: %s: reg %d without a name or too many", ErrProtocol, annex, r.Num)
					}
					next = r.Num + 1
					t.Regs = append(t.Regs, r)
				}
			}
		}
	}
	if err := walk(root, 0); err != nil {
		return nil, err
	}
	sort.SliceStable(t.Regs, func(i, j int) bool { return t.Regs[i].Num < t.Regs[j].Num })
	for i, r := range t.Regs {
		if i > 0 && t.Regs[i-1].Num == r.Num {
			return nil, fmt.Errorf("%w: register number %d declared twice", ErrProtocol, r.Num)
		}
		t.byName[r.Name] = i
	}
	return t, nil
}

func attr(e xml.StartElement, name string) string {
	for _, a := range e.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}
