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
	return (&kallsymsRecovery{r: r}).recover(digit0, text)
}

// kallsymsRecovery tries candidates of one kernel image in turn; it keeps
// the markers window (2 MiB) from one candidate to the next.
type kallsymsRecovery struct {
	r   virtReader
	win []byte
}

// recover runs the steps of the recovery, from the token table down to the
// offsets, on the candidate whose token '0' is at digit0.
func (kr *kallsymsRecovery) recover(digit0, text vmi.VA) (*Symbols, error) {
	if kr.win == nil {
		kr.win = make([]byte, markWin)
	}
	c := &kallsymsCandidate{r: kr.r, digit0: digit0}
	if err := c.readTokens(); err != nil {
		return nil, err
	}
	cands, err := c.findMarkers(kr.win)
	if err != nil {
		return nil, err
	}
	if err := c.findNames(cands); err != nil {
		return nil, err
	}
	if err := c.readOffsets(); err != nil {
		return nil, err
	}
	syms, err := c.expand()
	if err != nil {
		return nil, err
	}
	st := newSymbols(syms)
	if t, ok := st.Addr("_text"); !ok || t != text {
		return nil, c.fail("_text at %#x, the page tables say %#x", uint64(t), uint64(text))
	}
	return st, nil
}

// markWin is how far before the token table the markers are looked for.
// 6.1 stable kernels (as 6.2) may put kallsyms_seqs_of_names (3 bytes a
// symbol) between markers and token table.
const markWin = 2 << 20

// kallsymsCandidate is one candidate table and what each step found.
type kallsymsCandidate struct {
	r      virtReader
	digit0 vmi.VA

	tableVA vmi.VA   // kallsyms_token_table
	tokens  []string // its 256 tokens

	markers []uint32 // kallsyms_markers
	num     int      // kallsyms_num_syms
	namesVA vmi.VA   // kallsyms_names
	nameBuf []byte   // its entries

	base    uint64 // kallsyms_relative_base
	offsets []byte // kallsyms_offsets
}

func (c *kallsymsCandidate) fail(format string, a ...any) error {
	return fmt.Errorf("linux: kallsyms candidate at %#x: %s: %w", uint64(c.digit0), fmt.Sprintf(format, a...), ErrLayout)
}

// readTokens reads the token table's tail from '0' and the token index
// after it, then the whole table the index describes; every token must end
// where the next one starts.
func (c *kallsymsCandidate) readTokens() error {
	tail := make([]byte, 16<<10)
	n, _ := c.r.ReadVirt(tail, c.digit0)
	tail = tail[:n]
	pos := 0
	for i := '0'; i <= 0xff; i++ {
		j := indexByte(tail[pos:], 0)
		if j <= 0 {
			return c.fail("token %d not terminated", i)
		}
		pos += j + 1
	}
	endVA := c.digit0 + vmi.VA(pos)
	idxVA := align8(endVA)
	var ib [512]byte
	if _, err := c.r.ReadVirt(ib[:], idxVA); err != nil {
		return c.fail("token index: %v", err)
	}
	var ti [256]uint16
	for i := range ti {
		ti[i] = binary.LittleEndian.Uint16(ib[2*i:])
	}
	if ti[0] != 0 || uint64(ti['0']) > uint64(c.digit0) {
		return c.fail("token index does not start at 0")
	}
	c.tableVA = c.digit0 - vmi.VA(ti['0'])
	tableLen := int(endVA - c.tableVA)
	if tableLen > 64<<10 || c.tableVA%8 != 0 {
		return c.fail("token table of %d bytes at %#x", tableLen, uint64(c.tableVA))
	}
	table := make([]byte, tableLen)
	if _, err := c.r.ReadVirt(table, c.tableVA); err != nil {
		return c.fail("token table: %v", err)
	}
	c.tokens = make([]string, 256)
	for i := range 256 {
		next := tableLen
		if i < 255 {
			next = int(ti[i+1])
		}
		if int(ti[i]) >= next || next > tableLen || table[next-1] != 0 || indexByte(table[ti[i]:next], 0) != next-1-int(ti[i]) || next-1 == int(ti[i]) {
			return c.fail("token %d at %d does not end at the next token's index %d", i, ti[i], next)
		}
		c.tokens[i] = string(table[ti[i] : next-1])
	}
	return nil
}

// markersCand is a place before the token table that holds markers.
type markersCand struct {
	markers []uint32
	va      vmi.VA
	num     int // 0: not known from the layout
}

// findMarkers reads the markWin bytes before the token table into
// win and returns where kallsyms_markers could be: marker[0] == 0,
// increasing, followed by zero padding up to kallsyms_seqs_of_names (one
// candidate for each symbol count) or up to the table.
func (c *kallsymsCandidate) findMarkers(win []byte) ([]markersCand, error) {
	mb := win[:markWin]
	winVA := c.tableVA - markWin
	if _, err := c.r.ReadVirt(mb, winVA); err != nil {
		return nil, c.fail("markers: %v", err)
	}
	// markersAt checks n markers at start, followed by zero padding up to end
	markersAt := func(start, n, end int) ([]uint32, bool) {
		if start < 0 || start+4*n > end || end > markWin || u32(mb, start) != 0 {
			return nil, false
		}
		for _, x := range mb[start+4*n : end] {
			if x != 0 {
				return nil, false
			}
		}
		for i := 1; i < n; i++ {
			if u32(mb, start+4*i) <= u32(mb, start+4*(i-1)) {
				return nil, false
			}
		}
		out := make([]uint32, n)
		for i := range out {
			out[i] = u32(mb, start+4*i)
		}
		return out, true
	}
	var cands []markersCand
	// with kallsyms_seqs_of_names: try every symbol count
	var (
		lastStart, lastN, lastSeqs = -1, -1, -1
		lastMk                     []uint32
		lastOK                     bool
	)
	for num := 256; num < markWin/3 && len(cands) < 8; num++ {
		seqs := (markWin - 3*num) &^ 7
		n := (num + 255) / 256
		start := (seqs - 4*n) &^ 7
		if start != lastStart || n != lastN || seqs != lastSeqs {
			// (the same place for another symbol count is not checked again)
			lastStart, lastN, lastSeqs = start, n, seqs
			lastMk, lastOK = markersAt(start, n, seqs)
		}
		if lastOK && n > 2 {
			cands = append(cands, markersCand{lastMk, winVA + vmi.VA(start), num})
		}
	}
	// without: the markers end at the table
	for n := 1; n < 1<<14 && 4*n < markWin && len(cands) < 16; n++ {
		start := (markWin - 4*n) &^ 7
		if mk, ok := markersAt(start, n, markWin); ok {
			cands = append(cands, markersCand{mk, winVA + vmi.VA(start), 0})
		}
	}
	if len(cands) == 0 {
		return nil, c.fail("no kallsyms_markers before the token table (not the 6.1 layout)")
	}
	return cands, nil
}

// findNames finds, before the first markers candidate that has them,
// kallsyms_num_syms and the kallsyms_names entries that agree with the
// markers and end where the markers start.
func (c *kallsymsCandidate) findNames(cands []markersCand) error {
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
		if _, err := c.r.ReadVirt(nb, winVA); err != nil {
			continue
		}
		for p := int(winLen - last - 8); p >= 0; p-- {
			if (winVA+vmi.VA(p))%8 != 0 {
				continue
			}
			num := int(u32(nb, p))
			if num <= 256*(m-1) || num > 256*m || (cd.num != 0 && num != cd.num) {
				continue
			}
			if l, ok := checkNames(nb[p+8:], num, markers); ok && align8(winVA+vmi.VA(p+8+l)) == markersVA {
				c.markers, c.num = markers, num
				c.namesVA = winVA + vmi.VA(p+8)
				c.nameBuf = nb[p+8 : p+8+l]
				return nil
			}
		}
	}
	return c.fail("no kallsyms_num_syms whose names match the markers")
}

// readOffsets reads kallsyms_relative_base (16 bytes before the names, with
// num_syms between) and the kallsyms_offsets before it.
func (c *kallsymsCandidate) readOffsets() error {
	baseVA := c.namesVA - 16
	var bb [8]byte
	if _, err := c.r.ReadVirt(bb[:], baseVA); err != nil {
		return c.fail("kallsyms_relative_base: %v", err)
	}
	c.base = binary.LittleEndian.Uint64(bb[:])
	offVA := (baseVA - vmi.VA(4*c.num)) &^ 7
	c.offsets = make([]byte, 4*c.num)
	if _, err := c.r.ReadVirt(c.offsets, offVA); err != nil {
		return c.fail("kallsyms_offsets: %v", err)
	}
	return nil
}

// expand expands each name through the token table and gives it its
// address: relative to the base, or (CONFIG_KALLSYMS_ABSOLUTE_PERCPU, when
// most offsets are negative) absolute when positive. Addresses must not
// decrease.
func (c *kallsymsCandidate) expand() ([]Symbol, error) {
	neg := 0
	for i := range c.num {
		if int32(u32(c.offsets, 4*i)) < 0 {
			neg++
		}
	}
	absPercpu := neg > c.num/2
	syms := make([]Symbol, c.num)
	var prev uint64
	var sb strings.Builder
	off := 0
	for i := range c.num {
		l, hdr := entryLen(c.nameBuf[off:])
		ent := c.nameBuf[off+hdr : off+hdr+l]
		off += hdr + l
		sb.Reset()
		for _, t := range ent {
			sb.WriteString(c.tokens[t])
		}
		s := sb.String()
		if len(s) < 2 || len(s) > ksymNameLen {
			return nil, c.fail("symbol %d expands to %d bytes", i, len(s))
		}
		o := int32(u32(c.offsets, 4*i))
		var a uint64
		switch {
		case !absPercpu:
			a = c.base + uint64(uint32(o))
		case o >= 0:
			a = uint64(o)
		default:
			a = c.base - 1 - uint64(int64(o))
		}
		if a < prev {
			return nil, c.fail("symbol %d %q at %#x below the one before (%#x): offsets not sorted", i, s[1:], a, prev)
		}
		prev = a
		syms[i] = Symbol{Addr: vmi.VA(a), Type: s[0], Name: s[1:]}
	}
	return syms, nil
}

func u32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }

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
