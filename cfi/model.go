package cfi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
)

// The model file: the page-level models of kernel execution that `cfi
// learn` writes and `cfi monitor` checks against.
//
// Model 1 is the set of kernel code pages seen executing; Model 2 the
// directed edges A→B between pages that executed one after the other (for
// the sampler: caller page → callee page from unwound return addresses).
// A page is named by its region and its page index in it: core kernel text
// by the page's offset from _stext, module text by (module name, page
// offset from the module's text base), so a model learned on one boot
// applies on another with a different KASLR slide.
//
// The file is JSON, deterministic: pages and edges sorted and unique, one
// encoding for one model (Marshal(Parse(b)) == b for every b Marshal wrote).
// It is bound to the kernel build it was learned on (Build); Check refuses
// a model of another build with a *BuildMismatchError. Parse caps the file
// size and every count before allocating.

// ModelFormat and ModelVersion name the file format; Parse refuses others.
const (
	ModelFormat  = "vmscope-cfi-model"
	ModelVersion = 1
)

// Caps on what a model file may hold.
const (
	MaxModelBytes = 64 << 20 // the file
	MaxPages      = 1 << 20  // pages (4 GiB of text)
	MaxEdges      = 1 << 22
	MaxBanner     = 1024    // bytes of the kernel banner
	MaxTextPages  = 1 << 18 // core text pages (1 GiB, the kernel image's limit)
	MaxModulePage = 1 << 18 // a module page's index (1 GiB of module text)
	maxModuleName = 55      // MODULE_NAME_LEN - 1
)

var (
	// ErrModel is a model file that is not a valid model.
	ErrModel = vmerr.New("cfi: invalid model file", vmerr.ErrCorrupt)
	// ErrModelVersion is a model file of another format version.
	ErrModelVersion = vmerr.New("cfi: unsupported model version", vmerr.ErrUnsupported)
	// ErrBuildMismatch is a model learned on another kernel build.
	ErrBuildMismatch = errors.New("cfi: model of another kernel build")
)

// Page is a kernel code page named independently of the KASLR slide.
type Page struct {
	Module string // "" for core kernel text
	Index  uint32 // page index from _stext, or from the module's text base
}

// Core is the page of core kernel text at page index i from _stext.
func Core(i uint32) Page { return Page{Index: i} }

// String is "core+0x1a" or "MODULE+0x3" (page index in hex); ParsePage
// reads it back.
func (p Page) String() string {
	r := p.Module
	if r == "" {
		r = "core"
	}
	return r + "+0x" + strconv.FormatUint(uint64(p.Index), 16)
}

// Compare orders core pages first, then modules by name, then by index.
func (p Page) Compare(q Page) int {
	if c := strings.Compare(p.Module, q.Module); c != 0 {
		return c
	}
	switch {
	case p.Index < q.Index:
		return -1
	case p.Index > q.Index:
		return 1
	}
	return 0
}

// ParsePage parses what Page.String writes. The module name is 1 to 55
// of [A-Za-z0-9_-] ("core" names core text); the index is lower-case hex.
func ParsePage(s string) (Page, error) {
	r, idx, ok := strings.Cut(s, "+0x")
	if !ok || idx == "" || len(idx) > 8 || strings.ToLower(idx) != idx || (len(idx) > 1 && idx[0] == '0') {
		return Page{}, fmt.Errorf("page %q: want REGION+0xINDEX", s)
	}
	n, err := strconv.ParseUint(idx, 16, 32)
	if err != nil {
		return Page{}, fmt.Errorf("page %q: index: %v", s, err)
	}
	p := Page{Index: uint32(n)}
	if r != "core" {
		if !validModuleName(r) {
			return Page{}, fmt.Errorf("page %q: module name: want 1 to %d of [A-Za-z0-9_-]", s, maxModuleName)
		}
		p.Module = r
		if n >= MaxModulePage {
			return Page{}, fmt.Errorf("page %q: index past %#x", s, MaxModulePage)
		}
	}
	return p, nil
}

func validModuleName(s string) bool {
	if s == "" || len(s) > maxModuleName || s == "core" {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Edge is a page transition: From executed, then To.
type Edge struct{ From, To Page }

// Compare orders edges by From, then To.
func (e Edge) Compare(f Edge) int {
	if c := e.From.Compare(f.From); c != 0 {
		return c
	}
	return e.To.Compare(f.To)
}

func (e Edge) String() string { return e.From.String() + "->" + e.To.String() }

// Build is the kernel build a model is bound to. Banner is the kernel's
// `Linux version` line; TextPages the number of core text pages
// (_stext to _etext); Layout the SHA-256 of the core symbol table as
// offsets from _stext (LayoutHash). The text bytes themselves are not the
// binding: the kernel relocates absolute addresses inside its text by the
// KASLR slide, so the same build reads differently on every boot.
type Build struct {
	Banner    string `json:"banner"`
	TextPages uint32 `json:"text_pages"`
	Layout    string `json:"layout_sha256"`
}

// BuildMismatchError is a model checked against a kernel of another build.
type BuildMismatchError struct {
	Field       string // "banner", "text_pages" or "layout_sha256"
	Model, Live string
}

func (e *BuildMismatchError) Error() string {
	return fmt.Sprintf("cfi: model of another kernel build: %s is %q in the model, %q in the guest", e.Field, e.Model, e.Live)
}

func (e *BuildMismatchError) Unwrap() error { return ErrBuildMismatch }

// Check returns a *BuildMismatchError when live is another build than b.
func (b Build) Check(live Build) error {
	switch {
	case b.Banner != live.Banner:
		return &BuildMismatchError{Field: "banner", Model: b.Banner, Live: live.Banner}
	case b.TextPages != live.TextPages:
		return &BuildMismatchError{Field: "text_pages", Model: fmt.Sprint(b.TextPages), Live: fmt.Sprint(live.TextPages)}
	case b.Layout != live.Layout:
		return &BuildMismatchError{Field: "layout_sha256", Model: b.Layout, Live: live.Layout}
	}
	return nil
}

// Model is the page-level model of a kernel's execution.
type Model struct {
	Build Build
	// Source is how the model was learned (plugin, sample, step).
	Source string
	// LearnedMS is how long it was learned, in milliseconds.
	LearnedMS int64
	Pages     []Page // Model 1, sorted and unique
	Edges     []Edge // Model 2, sorted and unique
}

// Coverage is the share of core text pages in the model.
func (m *Model) Coverage() float64 {
	if m.Build.TextPages == 0 {
		return 0
	}
	n := 0
	for _, p := range m.Pages {
		if p.Module == "" {
			n++
		}
	}
	return float64(n) / float64(m.Build.TextPages)
}

// HasPage reports whether p is in Model 1.
func (m *Model) HasPage(p Page) bool {
	_, ok := slices.BinarySearchFunc(m.Pages, p, Page.Compare)
	return ok
}

// HasEdge reports whether e is in Model 2.
func (m *Model) HasEdge(e Edge) bool {
	_, ok := slices.BinarySearchFunc(m.Edges, e, Edge.Compare)
	return ok
}

// Modules lists the modules the model names, sorted.
func (m *Model) Modules() []string {
	var out []string
	for _, p := range m.Pages {
		if p.Module != "" && (len(out) == 0 || out[len(out)-1] != p.Module) {
			out = append(out, p.Module)
		}
	}
	return out
}

// modelJSON is the file's form.
type modelJSON struct {
	Format    string      `json:"format"`
	Version   int         `json:"version"`
	Build     Build       `json:"build"`
	Source    string      `json:"source"`
	LearnedMS int64       `json:"learned_ms"`
	Pages     []string    `json:"pages"`
	Edges     [][2]string `json:"edges"`
}

// Marshal encodes m canonically: pages and edges sorted and deduplicated,
// one element per line. It fails when m breaks a cap or holds an invalid
// page.
func (m *Model) Marshal() ([]byte, error) {
	c := m.canonical()
	if err := c.validate(); err != nil {
		return nil, err
	}
	j := modelJSON{Format: ModelFormat, Version: ModelVersion, Build: c.Build, Source: c.Source, LearnedMS: c.LearnedMS,
		Pages: make([]string, len(c.Pages)), Edges: make([][2]string, len(c.Edges))}
	for i, p := range c.Pages {
		j.Pages[i] = p.String()
	}
	for i, e := range c.Edges {
		j.Edges[i] = [2]string{e.From.String(), e.To.String()}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", " ")
	if err := enc.Encode(j); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// canonical is a copy of m with pages and edges sorted and unique.
func (m *Model) canonical() *Model {
	c := *m
	c.Pages = slices.Clone(m.Pages)
	slices.SortFunc(c.Pages, Page.Compare)
	c.Pages = slices.Compact(c.Pages)
	c.Edges = slices.Clone(m.Edges)
	slices.SortFunc(c.Edges, Edge.Compare)
	c.Edges = slices.Compact(c.Edges)
	return &c
}

func modelErr(structure string, off int64, format string, args ...any) error {
	return vmerr.Corrupt(ErrModel, structure, off, format, args...)
}

// validate checks the caps and that every page lies in its region.
func (m *Model) validate() error {
	switch {
	case len(m.Build.Banner) > MaxBanner:
		return modelErr("build banner", -1, "%d bytes, more than %d", len(m.Build.Banner), MaxBanner)
	case m.Build.TextPages == 0 || m.Build.TextPages > MaxTextPages:
		return modelErr("build text_pages", -1, "%d, want 1 to %d", m.Build.TextPages, MaxTextPages)
	case len(m.Build.Layout) != 64 || strings.Trim(m.Build.Layout, "0123456789abcdef") != "":
		return modelErr("build layout_sha256", -1, "%q is not 64 lower-case hex digits", m.Build.Layout)
	case len(m.Source) > 32:
		return modelErr("source", -1, "%d bytes, more than 32", len(m.Source))
	case m.LearnedMS < 0:
		return modelErr("learned_ms", -1, "negative (%d)", m.LearnedMS)
	case len(m.Pages) > MaxPages:
		return modelErr("pages", -1, "%d, more than %d", len(m.Pages), MaxPages)
	case len(m.Edges) > MaxEdges:
		return modelErr("edges", -1, "%d, more than %d", len(m.Edges), MaxEdges)
	}
	check := func(what string, p Page) error {
		if p.Module == "" {
			if p.Index >= m.Build.TextPages {
				return modelErr(what, -1, "core page %#x past the %#x text pages", p.Index, m.Build.TextPages)
			}
		} else if !validModuleName(p.Module) || p.Index >= MaxModulePage {
			return modelErr(what, -1, "invalid page %v", p)
		}
		return nil
	}
	for i, p := range m.Pages {
		if err := check(fmt.Sprintf("page %d", i), p); err != nil {
			return err
		}
	}
	for i, e := range m.Edges {
		if err := check(fmt.Sprintf("edge %d", i), e.From); err != nil {
			return err
		}
		if err := check(fmt.Sprintf("edge %d", i), e.To); err != nil {
			return err
		}
	}
	return nil
}

// ParseModel reads a model file: at most MaxModelBytes, of this format
// and version, pages and edges sorted and unique (the canonical form
// Marshal writes; anything else was not written by vmscope). Errors are
// *vmerr.FormatError wrapping ErrModel or ErrModelVersion.
func ParseModel(r io.Reader) (*Model, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxModelBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxModelBytes {
		return nil, modelErr("model file", MaxModelBytes, "larger than %d bytes", MaxModelBytes)
	}
	// The counts first, without decoding the arrays' elements.
	var head struct {
		Format  string            `json:"format"`
		Version int               `json:"version"`
		Pages   []json.RawMessage `json:"pages"`
		Edges   []json.RawMessage `json:"edges"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, jsonErr(err)
	}
	if head.Format != ModelFormat {
		return nil, modelErr("format", -1, "%q, want %q", head.Format, ModelFormat)
	}
	if head.Version != ModelVersion {
		return nil, &vmerr.FormatError{Struct: "version", Offset: -1, Err: fmt.Errorf("%w: %d (this vmscope reads %d)", ErrModelVersion, head.Version, ModelVersion)}
	}
	if len(head.Pages) > MaxPages || len(head.Edges) > MaxEdges {
		return nil, modelErr("pages and edges", -1, "%d pages, %d edges: more than %d or %d", len(head.Pages), len(head.Edges), MaxPages, MaxEdges)
	}
	var j modelJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, jsonErr(err)
	}
	if dec.More() {
		return nil, modelErr("model file", dec.InputOffset(), "data after the model")
	}
	m := &Model{Build: j.Build, Source: j.Source, LearnedMS: j.LearnedMS, Pages: make([]Page, len(j.Pages)), Edges: make([]Edge, len(j.Edges))}
	for i, s := range j.Pages {
		if m.Pages[i], err = ParsePage(s); err != nil {
			return nil, modelErr(fmt.Sprintf("page %d", i), -1, "%v", err)
		}
		if i > 0 && m.Pages[i-1].Compare(m.Pages[i]) >= 0 {
			return nil, modelErr(fmt.Sprintf("page %d", i), -1, "%v not after %v (pages are sorted and unique)", m.Pages[i], m.Pages[i-1])
		}
	}
	for i, e := range j.Edges {
		if m.Edges[i].From, err = ParsePage(e[0]); err == nil {
			m.Edges[i].To, err = ParsePage(e[1])
		}
		if err != nil {
			return nil, modelErr(fmt.Sprintf("edge %d", i), -1, "%v", err)
		}
		if i > 0 && m.Edges[i-1].Compare(m.Edges[i]) >= 0 {
			return nil, modelErr(fmt.Sprintf("edge %d", i), -1, "%v not after %v (edges are sorted and unique)", m.Edges[i], m.Edges[i-1])
		}
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func jsonErr(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return modelErr("JSON", se.Offset, "%v", err)
	case errors.As(err, &te):
		return modelErr("field "+te.Field, te.Offset, "%v", err)
	}
	return modelErr("JSON", -1, "%v", err)
}

// ModelBuilder collects pages and edges while learning, within the caps.
type ModelBuilder struct {
	pages   map[Page]struct{}
	edges   map[Edge]struct{}
	Dropped int // pages and edges not kept because a cap was reached
}

// NewModelBuilder returns an empty builder.
func NewModelBuilder() *ModelBuilder {
	return &ModelBuilder{pages: map[Page]struct{}{}, edges: map[Edge]struct{}{}}
}

// AddPage adds p to Model 1; it reports whether p is new.
func (b *ModelBuilder) AddPage(p Page) bool {
	if _, ok := b.pages[p]; ok {
		return false
	}
	if len(b.pages) >= MaxPages {
		b.Dropped++
		return false
	}
	b.pages[p] = struct{}{}
	return true
}

// AddEdge adds e to Model 2; it reports whether e is new.
func (b *ModelBuilder) AddEdge(e Edge) bool {
	if _, ok := b.edges[e]; ok {
		return false
	}
	if len(b.edges) >= MaxEdges {
		b.Dropped++
		return false
	}
	b.edges[e] = struct{}{}
	return true
}

// Len is the number of pages and edges collected.
func (b *ModelBuilder) Len() (pages, edges int) { return len(b.pages), len(b.edges) }

// Model is the model of what was collected, canonical.
func (b *ModelBuilder) Model(build Build, source string, learnedMS int64) *Model {
	m := &Model{Build: build, Source: source, LearnedMS: learnedMS}
	for p := range b.pages {
		m.Pages = append(m.Pages, p)
	}
	for e := range b.edges {
		m.Edges = append(m.Edges, e)
	}
	return m.canonical()
}
