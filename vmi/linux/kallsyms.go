package linux

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/vmscope/vmscope/vmi"
)

// Symbol is a kernel symbol, as /proc/kallsyms shows it.
type Symbol struct {
	Addr vmi.VA
	Type byte
	Name string
}

// Symbols is a kernel's symbol table in kallsyms order.
type Symbols struct {
	List   []Symbol
	byName map[string]int
}

func newSymbols(l []Symbol) *Symbols {
	s := &Symbols{List: l, byName: make(map[string]int, len(l))}
	for i, y := range l {
		if _, ok := s.byName[y.Name]; !ok {
			s.byName[y.Name] = i
		}
	}
	return s
}

// Addr returns the address of the first symbol called name.
func (s *Symbols) Addr(name string) (vmi.VA, bool) {
	if s == nil {
		return 0, false
	}
	i, ok := s.byName[name]
	if !ok {
		return 0, false
	}
	return s.List[i].Addr, true
}

func (s *Symbols) slide(d int64) {
	for i := range s.List {
		if s.List[i].Type != 'A' && s.List[i].Type != 'a' {
			s.List[i].Addr = vmi.VA(int64(s.List[i].Addr) + d)
		}
	}
}

// ParseKallsyms reads /proc/kallsyms or System.map text ("ADDR TYPE NAME",
// module symbols ignored). At most 1<<22 symbols.
func ParseKallsyms(r io.Reader) (*Symbols, error) {
	var l []Symbol
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 3 || len(f[1]) != 1 {
			return nil, fmt.Errorf("linux: symbol file line %d: %q: %w", line, sc.Text(), vmi.ErrCorrupt)
		}
		if len(f) > 3 && strings.HasPrefix(f[3], "[") {
			continue
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("linux: symbol file line %d: %w", line, err)
		}
		if len(l) >= maxSyms {
			return nil, fmt.Errorf("linux: symbol file: more than %d symbols: %w", maxSyms, vmi.ErrCorrupt)
		}
		l = append(l, Symbol{Addr: vmi.VA(a), Type: f[1][0], Name: f[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return newSymbols(l), nil
}

const (
	maxSyms      = 1 << 22
	maxNameBytes = 64 << 20
	ksymNameLen  = 512
)

// virtReader is what kallsyms recovery needs: reads of kernel virtual
// memory.
type virtReader interface {
	ReadVirt(p []byte, va vmi.VA) (int, error)
}

// recoverKallsyms recovers the kallsyms table of a 6.1-generation kernel
// (CONFIG_KALLSYMS_BASE_RELATIVE) from the position of the token '0' in
// kallsyms_token_table. scripts/kallsyms.c lays out, each label 8-aligned:
//
//	kallsyms_offsets      s32 x num_syms
//	kallsyms_relative_base u64
//	kallsyms_num_syms     u32
//	kallsyms_names        num_syms x (len, len token bytes); len >= 0x80 takes two bytes
//	kallsyms_markers      u32 x ceil(num_syms/256): offset in names of every 256th symbol
//	kallsyms_token_table  256 NUL-terminated tokens
//	kallsyms_token_index  u16 x 256: offset of each token in the table
//
// Every part is checked against the others; a table that does not hold
// together fails with ErrLayout.
func recoverKallsyms(r virtReader, digit0 vmi.VA, text vmi.VA) (*Symbols, error) {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("linux: kallsyms candidate at %#x: %s: %w", uint64(digit0), fmt.Sprintf(format, a...), ErrLayout)
	}
	// token table tail from '0' and token index after it
	tail := make([]byte, 16<<10)
	n, _ := r.ReadVirt(tail, digit0)
	tail = tail[:n]
	pos := 0
	for i := '0'; i <= 0xff; i++ {
		j := indexByte(tail[pos:], 0)
		if j <= 0 {
			return nil, fail("token %d not terminated", i)
		}
		pos += j + 1
	}
	endVA := digit0 + vmi.VA(pos)
	idxVA := align8(endVA)
	var ib [512]byte
	if _, err := r.ReadVirt(ib[:], idxVA); err != nil {
		return nil, fail("token index: %v", err)
	}
	var ti [256]uint16
	for i := range ti {
		ti[i] = binary.LittleEndian.Uint16(ib[2*i:])
	}
	if ti[0] != 0 || uint64(ti['0']) > uint64(digit0) {
		return nil, fail("token index does not start at 0")
	}
	tableVA := digit0 - vmi.VA(ti['0'])
	tableLen := int(endVA - tableVA)
	if tableLen > 64<<10 || tableVA%8 != 0 {
		return nil, fail("token table of %d bytes at %#x", tableLen, uint64(tableVA))
	}
	table := make([]byte, tableLen)
	if _, err := r.ReadVirt(table, tableVA); err != nil {
		return nil, fail("token table: %v", err)
	}
	tokens := make([]string, 256)
	for i := range 256 {
		next := tableLen
		if i < 255 {
			next = int(ti[i+1])
		}
		if int(ti[i]) >= next || next > tableLen || table[next-1] != 0 || indexByte(table[ti[i]:next], 0) != next-1-int(ti[i]) || next-1 == int(ti[i]) {
			return nil, fail("token %d at %d does not end at the next token's index %d", i, ti[i], next)
		}
		tokens[i] = string(table[ti[i] : next-1])
	}

	// markers before the table: marker[0] == 0, increasing. 6.1 stable
	// kernels (as 6.2) may put kallsyms_seqs_of_names (3 bytes a symbol)
	// between markers and token table.
	const markWin = 2 << 20
	mb := make([]byte, markWin)
	if _, err := r.ReadVirt(mb, tableVA-markWin); err != nil {
		return nil, fail("markers: %v", err)
	}
	u32 := func(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
	// markersAt checks c markers at start, followed by zero padding up to end
	markersAt := func(start, c, end int) ([]uint32, bool) {
		if start < 0 || start+4*c > end || end > markWin || u32(mb, start) != 0 {
			return nil, false
		}
		for _, x := range mb[start+4*c : end] {
			if x != 0 {
				return nil, false
			}
		}
		for i := 1; i < c; i++ {
			if u32(mb, start+4*i) <= u32(mb, start+4*(i-1)) {
				return nil, false
			}
		}
		out := make([]uint32, c)
		for i := range out {
			out[i] = u32(mb, start+4*i)
		}
		return out, true
	}
	type cand struct {
		markers []uint32
		va      vmi.VA
		num     int // 0: not known from the layout
	}
	var cands []cand
	// with kallsyms_seqs_of_names: try every symbol count
	for num := 256; num < markWin/3 && len(cands) < 8; num++ {
		seqs := (markWin - 3*num) &^ 7
		c := (num + 255) / 256
		start := (seqs - 4*c) &^ 7
		if mk, ok := markersAt(start, c, seqs); ok && c > 2 {
			cands = append(cands, cand{mk, tableVA - markWin + vmi.VA(start), num})
		}
	}
	// without: the markers end at the table
	for c := 1; c < 1<<14 && 4*c < markWin && len(cands) < 16; c++ {
		start := (markWin - 4*c) &^ 7
		if mk, ok := markersAt(start, c, markWin); ok {
			cands = append(cands, cand{mk, tableVA - markWin + vmi.VA(start), 0})
		}
	}
	if len(cands) == 0 {
		return nil, fail("no kallsyms_markers before the token table (not the 6.1 layout)")
	}
	var (
		names    []byte
		num      int
		namesVA  vmi.VA
		namesLen = -1
	)
	for _, cd := range cands {
		m, markers, markersVA := len(cd.markers), cd.markers, cd.va
		last := uint64(markers[m-1])
		// names, and num_syms 8 bytes before them
		winLen := last + 256*(2+ksymNameLen) + 64
		if winLen > maxNameBytes || uint64(markersVA) < winLen {
			continue
		}
		nb := make([]byte, winLen)
		winVA := markersVA - vmi.VA(winLen)
		if _, err := r.ReadVirt(nb, winVA); err != nil {
			continue
		}
		for p := int(winLen - last - 8); p >= 0; p-- {
			if (winVA+vmi.VA(p))%8 != 0 {
				continue
			}
			num = int(u32(nb, p))
			if num <= 256*(m-1) || num > 256*m || (cd.num != 0 && num != cd.num) {
				continue
			}
			if l, ok := checkNames(nb[p+8:], num, markers); ok && align8(winVA+vmi.VA(p+8+l)) == markersVA {
				namesLen, namesVA = l, winVA+vmi.VA(p+8)
				names = nb[p+8 : p+8+l]
				break
			}
		}
		if namesLen >= 0 {
			break
		}
	}
	if namesLen < 0 {
		return nil, fail("no kallsyms_num_syms whose names match the markers")
	}
	baseVA := namesVA - 16
	baseB := make([]byte, 8)
	if _, err := r.ReadVirt(baseB, baseVA); err != nil {
		return nil, fail("kallsyms_relative_base: %v", err)
	}
	base := binary.LittleEndian.Uint64(baseB)
	offVA := (baseVA - vmi.VA(4*num)) &^ 7
	ob := make([]byte, 4*num)
	if _, err := r.ReadVirt(ob, offVA); err != nil {
		return nil, fail("kallsyms_offsets: %v", err)
	}
	neg := 0
	for i := range num {
		if int32(u32(ob, 4*i)) < 0 {
			neg++
		}
	}
	absPercpu := neg > num/2
	syms := make([]Symbol, num)
	var prev uint64
	var sb strings.Builder
	off := 0
	for i := range num {
		l, hdr := entryLen(names[off:])
		ent := names[off+hdr : off+hdr+l]
		off += hdr + l
		sb.Reset()
		for _, c := range ent {
			sb.WriteString(tokens[c])
		}
		s := sb.String()
		if len(s) < 2 || len(s) > ksymNameLen {
			return nil, fail("symbol %d expands to %d bytes", i, len(s))
		}
		o := int32(u32(ob, 4*i))
		var a uint64
		switch {
		case !absPercpu:
			a = base + uint64(uint32(o))
		case o >= 0:
			a = uint64(o)
		default:
			a = base - 1 - uint64(int64(o))
		}
		if a < prev {
			return nil, fail("symbol %d %q at %#x below the one before (%#x): offsets not sorted", i, s[1:], a, prev)
		}
		prev = a
		syms[i] = Symbol{Addr: vmi.VA(a), Type: s[0], Name: s[1:]}
	}
	st := newSymbols(syms)
	if t, ok := st.Addr("_text"); !ok || t != text {
		return nil, fail("_text at %#x, the page tables say %#x", uint64(t), uint64(text))
	}
	return st, nil
}

// entryLen decodes a kallsyms_names entry length: one byte, or two when
// the first has its top bit set (6.1's big symbols).
func entryLen(b []byte) (l, hdr int) {
	if len(b) == 0 {
		return 0, 0
	}
	if b[0]&0x80 == 0 {
		return int(b[0]), 1
	}
	if len(b) < 2 {
		return 0, 0
	}
	return int(b[0]&0x7f) | int(b[1])<<7, 2
}

// checkNames parses num entries from b and checks they agree with the
// markers; it returns the names' length.
func checkNames(b []byte, num int, markers []uint32) (int, bool) {
	off := 0
	for i := range num {
		if i%256 == 0 && uint32(off) != markers[i/256] {
			return 0, false
		}
		l, hdr := entryLen(b[off:])
		if hdr == 0 || l == 0 || off+hdr+l > len(b) {
			return 0, false
		}
		off += hdr + l
	}
	return off, true
}

func align8(v vmi.VA) vmi.VA { return (v + 7) &^ 7 }

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
