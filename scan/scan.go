package scan

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"path"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hillu/go-yara/v4"
)

// ErrOption is the category of invalid Scan options.
var ErrOption = errors.New("scan: invalid option")

// File is one guest file to scan.
type File struct {
	Partition string // e.g. "p1"; "" for a bare filesystem
	FS        string // filesystem type, e.g. "ext4"
	Path      string // absolute guest path, "/etc/passwd"
	Ino       uint64
	Size      int64
	Mode      fs.FileMode
	Uid, Gid  uint32
	Owner     string      // owner name if the caller resolved it; else the uid is used
	Data      io.ReaderAt // the file's bytes [0, Size)
}

// StringMatch is one match of a rule string.
type StringMatch struct {
	ID     string `json:"id"`     // "$a"
	Offset int64  `json:"offset"` // from the start of the file
	Length int    `json:"length"` // bytes recorded by libyara (at most 512)
}

// Finding is one rule matching one file.
type Finding struct {
	Partition string         `json:"partition"`
	FS        string         `json:"filesystem"`
	Path      string         `json:"path"`
	Inode     uint64         `json:"inode"`
	Size      int64          `json:"size"`
	SHA256    string         `json:"sha256"`
	Rule      string         `json:"rule"`
	Namespace string         `json:"namespace"`
	Tags      []string       `json:"tags"`
	Meta      map[string]any `json:"meta"`
	// Strings are the first matches by (offset, id), at most the
	// WithMaxStrings cap; StringCount counts them all.
	Strings     []StringMatch `json:"strings"`
	StringCount int           `json:"string_count"`
}

// FileError is a file that could not be scanned (or not completely).
type FileError struct {
	Partition string
	FS        string
	Path      string
	Inode     uint64
	Err       error
}

func (e FileError) Error() string {
	return fmt.Sprintf("scan: %s:%s: %v", e.Partition, e.Path, e.Err)
}

func (e FileError) Unwrap() error { return e.Err }

// Skip reasons.
const (
	SkipTooBig = "larger than max file size"
)

// Skipped is a file not scanned on purpose (files left out by
// include/exclude patterns are only counted, in Summary.Excluded).
type Skipped struct {
	Partition string `json:"partition"`
	Path      string `json:"path"`
	Inode     uint64 `json:"inode"`
	Size      int64  `json:"size"`
	Reason    string `json:"reason"`
}

// Summary counts what a scan did. The CLI derives its exit code from it:
// Findings > 0 → 1, else Errors > 0 → 2: a scheduler must see a finding
// even when another file could not be read (that file is in the report).
type Summary struct {
	Files    int64         `json:"files"`         // files scanned completely
	Bytes    int64         `json:"bytes"`         // their bytes
	Matched  int           `json:"matched_files"` // files with at least one finding
	Findings int           `json:"findings"`
	Errors   int           `json:"errors"`
	Skipped  int           `json:"skipped"`
	Excluded int64         `json:"excluded"` // left out by include/exclude
	Rules    int           `json:"rules"`
	Duration time.Duration `json:"-"`
}

// Result is what Scan found, sorted: findings by (partition, path,
// namespace, rule), errors and skipped files by (partition, path).
type Result struct {
	Findings []Finding
	Errors   []FileError
	Skipped  []Skipped
	// ModulePrefix lists, sorted by (partition, path), the files whose
	// structure modules saw only a prefix (see WithModuleMaxSize).
	ModulePrefix []ModulePrefix
	Summary      Summary
}

type options struct {
	jobs       int
	maxSize    int64
	hash       bool
	include    []string
	exclude    []string
	progress   *Progress
	blockSize  int64
	overlap    int64
	timeout    time.Duration
	maxStrings int
	moduleMax  int64
}

// Option configures Scan.
type Option func(*options)

// WithJobs sets the number of workers (default runtime.NumCPU()).
func WithJobs(n int) Option { return func(o *options) { o.jobs = n } }

// WithMaxFileSize skips (and reports) files larger than n bytes; 0 = no limit.
func WithMaxFileSize(n int64) Option { return func(o *options) { o.maxSize = n } }

// WithHash computes the sha256 of every scanned file from the same reads
// that feed YARA. Without it only matched files get a sha256, computed by
// reading them again after the match.
func WithHash(on bool) Option { return func(o *options) { o.hash = on } }

// WithInclude scans only files whose guest path matches one of the patterns
// (see pattern for the syntax).
func WithInclude(globs ...string) Option {
	return func(o *options) { o.include = append(o.include, globs...) }
}

// WithExclude leaves out files whose guest path matches one of the patterns.
// Exclude wins over include.
func WithExclude(globs ...string) Option {
	return func(o *options) { o.exclude = append(o.exclude, globs...) }
}

// WithProgress makes Scan update p as it goes.
func WithProgress(p *Progress) Option { return func(o *options) { o.progress = p } }

// WithBlockSize sets the block size (default DefaultBlockSize); it must be
// at least twice the overlap.
func WithBlockSize(n int64) Option { return func(o *options) { o.blockSize = n } }

// WithOverlap sets the block overlap (default DefaultOverlap, at least
// MinOverlap).
func WithOverlap(n int64) Option { return func(o *options) { o.overlap = n } }

// WithTimeout bounds libyara's time on one file (whole seconds; 0 = none).
// A file that times out is a FileError.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithModuleMaxSize sets the largest file handed to libyara as one block
// when the rules import a module that parses file structure (see
// [WholeFileModules]); default DefaultModuleMaxSize. Such a file is read
// into a buffer of its size (one per worker, released after the file), so
// the memory a scan may take is jobs × n. Bigger files are scanned in
// blocks and listed in Result.ModulePrefix. 0 scans every file bigger than
// the block size in blocks.
func WithModuleMaxSize(n int64) Option { return func(o *options) { o.moduleMax = n } }

// DefaultModuleMaxSize is the default of WithModuleMaxSize.
const DefaultModuleMaxSize = 256 << 20

// WithMaxStrings caps the string matches kept per finding (default 16).
func WithMaxStrings(n int) Option { return func(o *options) { o.maxStrings = n } }

const maxJobs = 256

// maxModuleMax bounds WithModuleMaxSize (a buffer per worker).
const maxModuleMax = 16 << 30

func buildOptions(opts []Option) (options, selector, error) {
	o := options{
		jobs:       runtime.NumCPU(),
		blockSize:  DefaultBlockSize,
		overlap:    DefaultOverlap,
		maxStrings: 16,
		moduleMax:  DefaultModuleMaxSize,
	}
	for _, f := range opts {
		f(&o)
	}
	switch {
	case o.jobs < 1 || o.jobs > maxJobs:
		return o, selector{}, fmt.Errorf("%w: jobs %d not in [1, %d]", ErrOption, o.jobs, maxJobs)
	case o.overlap < MinOverlap:
		return o, selector{}, fmt.Errorf("%w: overlap %d < %d", ErrOption, o.overlap, MinOverlap)
	case o.blockSize < 2*o.overlap || o.blockSize > 1<<30:
		return o, selector{}, fmt.Errorf("%w: block size %d not in [2*overlap, 1 GiB]", ErrOption, o.blockSize)
	case o.maxSize < 0:
		return o, selector{}, fmt.Errorf("%w: max file size %d < 0", ErrOption, o.maxSize)
	case o.maxStrings < 0:
		return o, selector{}, fmt.Errorf("%w: max strings %d < 0", ErrOption, o.maxStrings)
	case o.moduleMax < 0 || o.moduleMax > maxModuleMax:
		return o, selector{}, fmt.Errorf("%w: module max size %d not in [0, %d]", ErrOption, o.moduleMax, int64(maxModuleMax))
	}
	sel, err := newSelector(o.include, o.exclude)
	if err != nil {
		return o, sel, fmt.Errorf("%w: %w", ErrOption, err)
	}
	return o, sel, nil
}

// Scan runs rules over every file received from files until the channel is
// closed or ctx is cancelled. The producer should stop sending when ctx is
// done. On cancellation Scan returns what it has, sorted, and ctx.Err().
//
// A file of at most the block size is read whole and handed to libyara as
// one buffer: the scan is exactly `yara FILE`. So is a file of at most the
// module max size (WithModuleMaxSize) when the rules import a module that
// parses file structure ([WholeFileModules]). A bigger file is cut into
// blocks overlapping by the overlap; compared with `yara FILE` the
// differences are:
//   - a string match longer than the overlap that straddles a boundary is
//     missed (impossible for regexps and hex strings, capped at 4096 bytes
//     by libyara, and for text strings shorter than the overlap);
//   - a regexp match starting near the end of a block is cut at the end of
//     that block (its offset is right, its length may be shorter);
//   - the pe, elf, dotnet... modules parse the first block only (such
//     files are listed in Result.ModulePrefix);
//   - a condition reading data (uint32(x), hash.*(...)) is served by reading
//     the block again when it is not the block last read.
func Scan(ctx context.Context, rules *Rules, files <-chan File, opts ...Option) (*Result, error) {
	if rules == nil || rules.y == nil {
		return nil, &RulesError{File: "(none)", Msg: "no rules"}
	}
	o, sel, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if o.progress != nil {
		o.progress.start()
	}
	mods, err := importedModules(rules)
	if err != nil {
		return nil, err
	}
	s := &scanState{rules: rules, o: o, sel: sel}
	for _, m := range mods {
		if !blockSafeModules[m] {
			s.wholeModules = append(s.wholeModules, m)
		}
	}
	s.wholeMax = o.blockSize
	if len(s.wholeModules) > 0 {
		s.wholeMax = max(o.blockSize, o.moduleMax)
	}
	scanners := make([]*yara.Scanner, o.jobs)
	for i := range scanners {
		sc, err := yara.NewScanner(rules.y)
		if err != nil {
			for _, x := range scanners[:i] {
				x.Destroy()
			}
			return nil, fmt.Errorf("scan: new yara scanner: %w", err)
		}
		if o.timeout > 0 {
			sc.SetTimeout(o.timeout)
		}
		scanners[i] = sc
	}
	var wg sync.WaitGroup
	for _, sc := range scanners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer sc.Destroy()
			s.worker(ctx, sc, files)
		}()
	}
	wg.Wait()
	res := s.result(time.Since(start))
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// WholeFileModules lists the YARA modules known to libyara 4.2 that read
// only the first block of a block-wise scan, or need contiguous blocks:
// pe, elf, dotnet, macho and dex parse the first block; magic looks at the
// first block; math's global functions (math.count, math.percentage...)
// are undefined over overlapping blocks. Rules importing any module not in
// the block-safe set (hash, time, string, console) get whole files up to
// the module max size; this list is for documentation and tests.
var WholeFileModules = []string{"dex", "dotnet", "elf", "macho", "magic", "math", "pe"}

// blockSafeModules give the same results over overlapping blocks as over
// the whole file: hash walks the blocks by offset; the others read no data.
var blockSafeModules = map[string]bool{"hash": true, "time": true, "string": true, "console": true}

// importedModules returns the modules the compiled rules import, sorted: a
// scan of an empty buffer runs the rules' import instructions, each of
// which asks the callback first (CALLBACK_MSG_IMPORT_MODULE). Only the
// externals the rules define are set (a yarac file may define none).
func importedModules(rules *Rules) ([]string, error) {
	sc, err := yara.NewScanner(rules.y)
	if err != nil {
		return nil, fmt.Errorf("scan: new yara scanner: %w", err)
	}
	defer sc.Destroy()
	for _, k := range externalNames {
		if !rules.HasExternal(k) {
			continue
		}
		if err := sc.DefineVariable(k, Externals[k]); err != nil {
			return nil, fmt.Errorf("scan: define %s: %w", k, err)
		}
	}
	var im importRecorder
	sc.SetCallback(&im)
	if err := sc.ScanMem(nil); err != nil {
		return nil, fmt.Errorf("scan: listing the rules' modules: %w", err)
	}
	sort.Strings(im.names)
	return im.names, nil
}

type importRecorder struct{ names []string }

func (im *importRecorder) RuleMatching(*yara.ScanContext, *yara.Rule) (bool, error) {
	return false, nil
}

func (im *importRecorder) ImportModule(_ *yara.ScanContext, name string) ([]byte, bool, error) {
	for _, n := range im.names {
		if n == name {
			return nil, false, nil
		}
	}
	im.names = append(im.names, name)
	return nil, false, nil
}

type scanState struct {
	rules *Rules
	o     options
	sel   selector

	// wholeModules are the imported modules that need whole files; files
	// up to wholeMax bytes are scanned as one buffer.
	wholeModules []string
	wholeMax     int64

	excluded atomic.Int64

	mu       sync.Mutex
	findings []Finding
	errs     []FileError
	skipped  []Skipped
	prefix   []ModulePrefix
	files    int64
	bytes    int64
	matched  int
}

// ModulePrefix is a file bigger than the module max size, scanned in blocks
// by rules importing modules that parse file structure: those modules saw
// only its first block, so rules using them may miss (`yara FILE` parses
// the whole file).
type ModulePrefix struct {
	Partition string   `json:"partition"`
	Path      string   `json:"path"`
	Inode     uint64   `json:"inode"`
	Size      int64    `json:"size"`
	Modules   []string `json:"modules"` // the imported modules concerned, sorted
	Prefix    int64    `json:"prefix"`  // bytes they saw: the first block
}

// worker state, reused for every file.
type worker struct {
	s    *scanState
	sc   *yara.Scanner
	it   blockIter
	col  collector
	head []byte
	h    hash.Hash
	rbuf []byte // for re-reading matched files when not hashing
	// whole is the buffer of whole-file scans up to the block size, kept
	// (grown up to the block size); bigger whole files get a buffer of
	// their own, released after the file.
	whole []byte
}

func (s *scanState) worker(ctx context.Context, sc *yara.Scanner, files <-chan File) {
	w := &worker{s: s, sc: sc, head: make([]byte, headLen)}
	w.h = sha256.New()
	w.it.blockSize = s.o.blockSize
	w.it.step = s.o.blockSize - s.o.overlap
	if s.o.progress != nil {
		w.it.progress = &s.o.progress.Bytes
	}
	w.col.rules = s.rules
	w.col.max = s.o.maxStrings
	sc.SetCallback(&w.col)
	for {
		select {
		case <-ctx.Done():
			return
		case f, ok := <-files:
			if !ok {
				return
			}
			w.file(ctx, f)
		}
	}
}

func (w *worker) file(ctx context.Context, f File) {
	s := w.s
	if !s.sel.selected(f.Path) {
		s.excluded.Add(1)
		return
	}
	p := s.o.progress
	if p != nil {
		defer p.Files.Add(1)
	}
	if s.o.maxSize > 0 && f.Size > s.o.maxSize {
		s.mu.Lock()
		s.skipped = append(s.skipped, Skipped{f.Partition, f.Path, f.Ino, f.Size, SkipTooBig})
		s.mu.Unlock()
		return
	}
	fail := func(err error) {
		if p != nil {
			p.Errors.Add(1)
		}
		s.mu.Lock()
		s.errs = append(s.errs, FileError{f.Partition, f.FS, f.Path, f.Ino, err})
		s.mu.Unlock()
	}
	if f.Size < 0 || f.Data == nil {
		fail(fmt.Errorf("bad file: size %d, data %v", f.Size, f.Data != nil))
		return
	}
	var (
		data     []byte // the whole file, when scanned as one buffer
		release  func()
		head     []byte
		complete bool // every byte was seen: the hash covers the file
		h        hash.Hash
	)
	if s.o.hash {
		h = w.h
	}
	whole := f.Size <= s.wholeMax
	if whole {
		data, release = w.buffer(f.Size)
		defer release()
		if err := readWhole(ctx, f, data, p); err != nil {
			if ctx.Err() != nil {
				return // cancelled: not reported
			}
			fail(err)
			return
		}
		head = data[:min(f.Size, headLen)]
	} else {
		head = w.head[:min(f.Size, headLen)]
		if n, err := f.Data.ReadAt(head, 0); n < len(head) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			fail(fmt.Errorf("scan: read %d bytes at offset 0: %w", len(head), err))
			return
		}
	}
	owner := f.Owner
	if owner == "" {
		owner = strconv.FormatUint(uint64(f.Uid), 10)
	}
	vars := [...]struct{ k, v string }{
		{"filename", path.Base(f.Path)},
		{"filepath", f.Path},
		{"extension", extension(f.Path)},
		{"filetype", fileType(head)},
		{"owner", owner},
	}
	for _, kv := range vars {
		if !s.rules.HasExternal(kv.k) {
			continue // a yarac file compiled without it
		}
		if err := w.sc.DefineVariable(kv.k, kv.v); err != nil {
			fail(fmt.Errorf("define %s: %w", kv.k, err))
			return
		}
	}
	w.col.reset(f)
	var yerr error
	if whole {
		yerr = w.sc.ScanMem(data)
		complete = true
	} else {
		w.it.reset(ctx, f.Data, f.Size, head, h)
		yerr = w.sc.ScanMemBlocks(&w.it)
		if w.it.cancelled || (ctx.Err() != nil && !w.it.complete()) {
			return // cancelled: not reported
		}
		if w.it.err != nil {
			fail(w.it.err)
			return
		}
		complete = w.it.complete()
	}
	if yerr != nil {
		fail(fmt.Errorf("yara: %w", yerr))
		// Rules that matched before the error still matched.
	}
	found := w.col.findings
	if len(found) > 0 || s.o.hash {
		var sum string
		switch {
		case whole:
			w.h.Reset()
			w.h.Write(data)
			sum = hex.EncodeToString(w.h.Sum(nil))
		case h != nil && complete:
			sum = hex.EncodeToString(h.Sum(nil))
		case len(found) > 0:
			var err error
			sum, err = w.rehash(ctx, f)
			if err != nil {
				fail(fmt.Errorf("sha256: %w", err))
			}
		}
		for i := range found {
			found[i].SHA256 = sum
		}
	}
	if p != nil && len(found) > 0 {
		p.Findings.Add(int64(len(found)))
	}
	s.mu.Lock()
	s.findings = append(s.findings, found...)
	if yerr == nil {
		s.files++
		s.bytes += f.Size
	}
	if len(found) > 0 {
		s.matched++
	}
	if !whole && len(s.wholeModules) > 0 {
		s.prefix = append(s.prefix, ModulePrefix{f.Partition, f.Path, f.Ino, f.Size, s.wholeModules, min(f.Size, s.o.blockSize)})
	}
	s.mu.Unlock()
}

// wholeChunk is the read size of whole-file reads (between two checks of
// the context and two progress updates).
const wholeChunk = 4 << 20

// readWhole fills data with the file's bytes.
func readWhole(ctx context.Context, f File, data []byte, p *Progress) error {
	for off := 0; off < len(data); {
		if off > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		b := data[off:min(len(data), off+wholeChunk)]
		n, err := f.Data.ReadAt(b, int64(off))
		if n < len(b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("scan: read %d bytes at offset %d: %w", len(b)-n, off+n, err)
		}
		off += n
		if p != nil {
			p.Bytes.Add(int64(n))
		}
	}
	return nil
}

// buffer returns a buffer of n bytes for a whole-file scan and the function
// that gives it back. Up to the block size it is the worker's own buffer;
// a bigger one is mapped for this file only, so the memory of a big file
// is returned when the file is done.
func (w *worker) buffer(n int64) ([]byte, func()) {
	if n <= w.s.o.blockSize {
		if int64(cap(w.whole)) < n {
			w.whole = make([]byte, min(max(n, 2*int64(cap(w.whole)), 64<<10), w.s.o.blockSize))
		}
		return w.whole[:n], func() {}
	}
	b, free := bigBuffer(int(n))
	return b, free
}

// rehash reads a matched file again to hash it (only without WithHash).
func (w *worker) rehash(ctx context.Context, f File) (string, error) {
	if w.rbuf == nil {
		w.rbuf = make([]byte, 1<<20)
	}
	h := sha256.New()
	for off := int64(0); off < f.Size; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		b := w.rbuf[:min(int64(len(w.rbuf)), f.Size-off)]
		n, err := f.Data.ReadAt(b, off)
		if n < len(b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", fmt.Errorf("read at offset %d: %w", off, err)
		}
		h.Write(b)
		off += int64(n)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (s *scanState) result(d time.Duration) *Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &Result{Findings: s.findings, Errors: s.errs, Skipped: s.skipped, ModulePrefix: s.prefix}
	SortFindings(r.Findings)
	sort.SliceStable(r.Errors, func(i, j int) bool {
		a, b := r.Errors[i], r.Errors[j]
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.Err.Error() < b.Err.Error()
	})
	sort.Slice(r.Skipped, func(i, j int) bool {
		a, b := r.Skipped[i], r.Skipped[j]
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.Inode < b.Inode
	})
	sort.Slice(r.ModulePrefix, func(i, j int) bool {
		a, b := r.ModulePrefix[i], r.ModulePrefix[j]
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.Inode < b.Inode
	})
	r.Summary = Summary{
		Files:    s.files,
		Bytes:    s.bytes,
		Matched:  s.matched,
		Findings: len(r.Findings),
		Errors:   len(r.Errors),
		Skipped:  len(r.Skipped),
		Excluded: s.excluded.Load(),
		Rules:    s.rules.Count(),
		Duration: d,
	}
	return r
}

// SortFindings sorts findings by partition, path, namespace, rule (then
// inode, for hard links listed twice).
func SortFindings(fs []Finding) {
	sort.Slice(fs, func(i, j int) bool {
		a, b := &fs[i], &fs[j]
		switch {
		case a.Partition != b.Partition:
			return a.Partition < b.Partition
		case a.Path != b.Path:
			return a.Path < b.Path
		case a.Namespace != b.Namespace:
			return a.Namespace < b.Namespace
		case a.Rule != b.Rule:
			return a.Rule < b.Rule
		}
		return a.Inode < b.Inode
	})
}

// collector receives libyara's matches for one file.
type collector struct {
	rules    *Rules
	max      int
	file     File
	findings []Finding
}

func (c *collector) reset(f File) {
	c.file = f
	c.findings = nil
}

// RuleMatching implements yara.ScanCallback.
func (c *collector) RuleMatching(sc *yara.ScanContext, r *yara.Rule) (bool, error) {
	ns, id := r.Namespace(), r.Identifier()
	fd := Finding{
		Partition: c.file.Partition,
		FS:        c.file.FS,
		Path:      c.file.Path,
		Inode:     c.file.Ino,
		Size:      c.file.Size,
		Rule:      id,
		Namespace: ns,
	}
	if info, ok := c.rules.info(ns, id); ok {
		fd.Tags, fd.Meta = info.Tags, info.Meta
	}
	var ms []StringMatch
	for _, s := range r.Strings() {
		matches := s.Matches(sc)
		if len(matches) == 0 {
			continue
		}
		fd.StringCount += len(matches)
		sid := s.Identifier()
		// libyara keeps a string's matches sorted by offset, so the
		// first max of each string contain the first max overall.
		for i := range matches[:min(len(matches), c.max)] {
			m := &matches[i]
			ms = append(ms, StringMatch{ID: sid, Offset: m.Base() + m.Offset(), Length: len(m.Data())})
		}
	}
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Offset != ms[j].Offset {
			return ms[i].Offset < ms[j].Offset
		}
		return ms[i].ID < ms[j].ID
	})
	if len(ms) > c.max {
		ms = ms[:c.max]
	}
	fd.Strings = ms
	c.findings = append(c.findings, fd)
	return false, nil
}
