package linux

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// Phase is a step of discovery, as a StopError names it.
type Phase string

// The phases of Discover, in the order they run (the banner search of a
// dump without CPU state comes before the page tables).
const (
	PhasePageTables Phase = "page tables" // a vCPU's CR3, or a PML4 found near a banner
	PhaseBanner     Phase = "banner"      // the Linux version banner, in physical memory or the kernel image
	PhaseKallsyms   Phase = "kallsyms"    // the kallsyms table recovered from the kernel image
	PhaseBTF        Phase = "BTF"         // the kernel's .BTF section
)

// Budget bounds the work of Discover, whose input may be hostile: memory
// made so that every page looks like a page-table root, or a kernel image
// full of fake kallsyms tables, would otherwise keep discovery busy for
// hours without ever allocating much. When either bound is reached
// Discover fails with a *StopError wrapping ErrBudget.
type Budget struct {
	// Bytes is how many bytes of guest-physical memory discovery may read
	// besides its one pass over the whole memory in search of the banner
	// (a dump without CPU state): page-table walks, the kernel image scan,
	// every kallsyms candidate's reads, BTF.
	Bytes int64
	// Candidates is how many candidates discovery may try: page-table
	// roots (each vCPU's CR3, each page that looks like a PML4 near a
	// banner) and kallsyms token tables.
	Candidates int
}

// DefaultBudget is the budget Discover runs with unless WithBudget
// changes it. Discovery of the test fixture's kernels (a Debian 6.1
// kernel, 4- and 5-level paging, KASLR on and off, with and without CPU
// state) spends less than 1/16 of it (TestDiscoveryBudget).
var DefaultBudget = Budget{Bytes: 1 << 30, Candidates: 4096}

// ErrBudget is discovery stopped by its Budget.
var ErrBudget = vmerr.New("linux: discovery budget spent", nil)

// WithBudget sets discovery's budget; a field left zero (or negative)
// keeps DefaultBudget's.
func WithBudget(b Budget) Option {
	return func(o *options) { o.budget = b }
}

func (b Budget) orDefault() Budget {
	if b.Bytes <= 0 {
		b.Bytes = DefaultBudget.Bytes
	}
	if b.Candidates <= 0 {
		b.Candidates = DefaultBudget.Candidates
	}
	return b
}

// StopError is discovery stopped before its end: by its budget (Err is
// ErrBudget and Over says which bound) or by its context (Err is the
// context's error). It names the phase and how far the phase got.
type StopError struct {
	Phase    Phase
	Progress string // how far the phase got, e.g. "1536 of 20480 pages around the banner at 0x1000000"
	Over     string // "bytes" or "candidates" when the budget stopped discovery
	Spent    Budget // what discovery had spent
	Budget   Budget // the budget it ran with
	Err      error
}

func (e *StopError) Error() string {
	spent := fmt.Sprintf("%d of %d bytes read, %d of %d candidates tried", e.Spent.Bytes, e.Budget.Bytes, e.Spent.Candidates, e.Budget.Candidates)
	if e.Over != "" {
		return fmt.Sprintf("linux: discovery budget of %s spent in the %s phase (%s): %s", e.Over, e.Phase, e.Progress, spent)
	}
	return fmt.Sprintf("linux: discovery stopped in the %s phase (%s; %s): %v", e.Phase, e.Progress, spent, e.Err)
}

func (e *StopError) Unwrap() error { return e.Err }

// countingMem counts the bytes read from guest-physical memory and, while
// discovery runs, refuses a read that would take the budgeted bytes past
// limit.
type countingMem struct {
	vmi.Memory
	n       atomic.Int64 // bytes read
	pass    atomic.Int64 // of which by the one pass over memory (not budgeted)
	limit   atomic.Int64 // budgeted bytes discovery may read; 0: no limit
	refused atomic.Bool  // a read was refused for the limit
}

func (c *countingMem) ReadAt(p []byte, off int64) (int, error) {
	if l := c.limit.Load(); l > 0 && c.budgeted()+int64(len(p)) > l {
		c.refused.Store(true)
		return 0, ErrBudget
	}
	n, err := c.Memory.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// passRead is a read of the one pass over memory: counted, not budgeted.
func (c *countingMem) passRead(p []byte, off int64) (int, error) {
	n, err := c.Memory.ReadAt(p, off)
	c.n.Add(int64(n))
	c.pass.Add(int64(n))
	return n, err
}

func (c *countingMem) budgeted() int64 { return c.n.Load() - c.pass.Load() }

// meter keeps discovery's account: the phase it is in and how far that
// got, the candidates tried, and the budget. Loops call check (ctx and
// bytes) and candidate (one more candidate) and return the *StopError
// they get.
type meter struct {
	mem      *countingMem
	budget   Budget
	cands    int
	phase    Phase
	progress func() string
}

func newMeter(mem *countingMem, b Budget) *meter {
	mem.limit.Store(b.Bytes)
	mem.refused.Store(false)
	return &meter{mem: mem, budget: b, progress: func() string { return "starting" }}
}

// done lifts the byte limit: the walks after discovery are not budgeted.
func (m *meter) done() { m.mem.limit.Store(0) }

// enter starts a phase; progress says how far it got when it stops.
func (m *meter) enter(p Phase, progress func() string) {
	m.phase, m.progress = p, progress
}

func (m *meter) spent() Budget {
	return Budget{Bytes: m.mem.budgeted(), Candidates: m.cands}
}

func (m *meter) stop(over string, err error) error {
	return &StopError{Phase: m.phase, Progress: m.progress(), Over: over, Spent: m.spent(), Budget: m.budget, Err: err}
}

// check fails when ctx is done or a read was refused for the byte budget.
func (m *meter) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return m.stop("", err)
	}
	if m.mem.refused.Load() {
		return m.stop("bytes", ErrBudget)
	}
	return nil
}

// candidate counts one more candidate, or fails when the budget has none
// left (or check fails).
func (m *meter) candidate(ctx context.Context) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	if m.cands >= m.budget.Candidates {
		return m.stop("candidates", ErrBudget)
	}
	m.cands++
	return nil
}

// pageCache serves the reads of page-table entries (8 bytes) from whole
// 4 KiB pages it keeps, the last few: the 512 walks of findImage, and the
// walk of every page the image scan reads, read the same few table pages
// again and again, one entry at a time. Larger reads go through.
type pageCache struct {
	r     io.ReaderAt
	pages [8]cachedPage
	next  int
}

type cachedPage struct {
	pa int64
	ok bool
	b  [4096]byte
}

func (c *pageCache) ReadAt(p []byte, off int64) (int, error) {
	base := off &^ 0xfff
	if off < 0 || len(p) > 8 || off-base+int64(len(p)) > 4096 {
		return c.r.ReadAt(p, off)
	}
	for i := range c.pages {
		if e := &c.pages[i]; e.ok && e.pa == base {
			return copy(p, e.b[off-base:]), nil
		}
	}
	e := &c.pages[c.next]
	e.ok = false
	if n, _ := c.r.ReadAt(e.b[:], base); n < len(e.b) {
		// a page partly present (or refused): read what was asked
		return c.r.ReadAt(p, off)
	}
	e.pa, e.ok = base, true
	c.next = (c.next + 1) % len(c.pages)
	return copy(p, e.b[off-base:]), nil
}
