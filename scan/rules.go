package scan

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hillu/go-yara/v4"
)

// ErrRules is the category of every error about rule files: unreadable,
// empty or not compiling. Match it with errors.Is; the detail is a
// [*RulesError].
var ErrRules = errors.New("yara rules")

// RulesError says which rule file (and line, when libyara knows it) failed.
type RulesError struct {
	File string // path of the rule file as given (or "embedded:NAME")
	Line int    // 1-based; 0 when not about a line
	Msg  string
	Err  error // underlying error, if any (e.g. from os.Open)
}

func (e *RulesError) Error() string {
	var b strings.Builder
	b.WriteString("scan: rules: ")
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrRules) true.
func (e *RulesError) Is(target error) bool { return target == ErrRules }

// Unwrap returns the underlying error.
func (e *RulesError) Unwrap() error { return e.Err }

// Externals are the external variables every rule set is compiled with
// (with these defaults) and that are set for every scanned file. They are
// the ones LOKI and THOR define and signature-base's rules test, with
// their values (scan/SCHEMA.md has the full table):
//
//	filename   base name of the guest path           "passwd"
//	filepath   full guest path                       "/etc/passwd"
//	extension  lower-case extension with the dot     ".php" ("" if none)
//	filetype   LOKI/THOR type from magic bytes       "EXE", "ELF", "JSP", "ASP", "PHP"... "UNKNOWN"
//	owner      user name from the guest's own        "confluence" (the uid, "1001",
//	           /etc/passwd (File.Owner)               when the caller resolved none)
//	md5        always "" (computing it would need a second read; rules
//	           testing md5 == "..." never match)
var Externals = map[string]string{
	"filename":  "",
	"filepath":  "",
	"extension": "",
	"filetype":  "",
	"owner":     "",
	"md5":       "",
}

// externalNames is Externals' keys, sorted.
var externalNames = []string{"extension", "filename", "filepath", "filetype", "md5", "owner"}

//go:embed rules/*.yar
var defaultRulesFS embed.FS

// Rules is a compiled rule set. It is safe for concurrent use by Scan.
type Rules struct {
	y        *yara.Rules
	digest   string
	count    int
	sources  []RuleSource
	warnings []string
	metaOnce sync.Once
	meta     map[ruleKey]RuleInfo // by metaIndex
	cached   bool                 // loaded from the compiled-rules cache
	byStamp  bool                 // ... found by the stamps of its files, none read
	compiled bool                 // loaded from a yarac file
	ext      map[string]bool      // externals a yarac file defines (nil: all of Externals)
	cacheErr error
}

// CacheError is why the compiled rules could not be written to the cache
// (the rules themselves are fine), or nil.
func (r *Rules) CacheError() error { return r.cacheErr }

// Cached reports whether the rules were loaded from the compiled-rules
// cache rather than compiled.
func (r *Rules) Cached() bool { return r.cached }

// Compiled reports whether the rules were loaded from a compiled rule file.
func (r *Rules) Compiled() bool { return r.compiled }

// HasExternal reports whether the rules define the external variable k
// (always, for rules compiled by vmscope; for a yarac file, those it was
// compiled with).
func (r *Rules) HasExternal(k string) bool { return r.ext == nil || r.ext[k] }

// RuleSource is one compiled rule file and the namespace its rules got.
type RuleSource struct {
	Path      string // as found (embedded rules: "embedded:NAME")
	Namespace string
}

// RuleInfo describes a compiled rule, for reports (SARIF rules[]).
type RuleInfo struct {
	Namespace string
	Rule      string
	Tags      []string
	Meta      map[string]any
}

type ruleKey struct{ ns, rule string }

// LoadRules compiles .yar/.yara files and directories of them, or loads
// one compiled rule file; see [LoadRulesCached], without a cache.
func LoadRules(paths ...string) (*Rules, error) { return LoadRulesCached("", paths...) }

// LoadRulesCached compiles rule sources, or loads compiled rules, as users
// ship them:
//
//   - A file is compiled with its base name as namespace.
//   - A directory is walked recursively; its *.yar and *.yara files are
//     compiled in lexical order of their slash-separated path relative to
//     the directory, and that relative path is their namespace
//     ("webshells/php.yar"). A file of the walk that another source
//     includes is compiled only where it is included (an index.yar that
//     includes its neighbours does not compile them twice).
//   - include directives are resolved relative to the including file, and
//     included files are part of [Rules.Digest].
//   - A compiled rule file (`yarac` output: it starts with "YARA") is loaded
//     as it is; it cannot be combined with other rules. One of another
//     libyara format version, or a file that only looks like one, is
//     refused with a [*RulesError] matching [ErrRulesVersion] or [ErrRules].
//     Its externals are those it was compiled with (yarac -d filename= ...):
//     the ones of [Externals] it defines are set per file, others not.
//
// If two sources would get the same namespace, the later ones get a "#2",
// "#3"... suffix, so the namespaces depend only on the arguments and the
// tree. Sources are compiled once with [Externals] defined.
//
// With a cacheDir, the compiled rules are kept in cacheDir under a key made
// of the digest of every source (includes too, and the namespaces), the
// external variables and the libyara version; a later call with the same
// key loads them instead of compiling (Rules.Cached says so). The cache
// file is written atomically (a temporary file renamed); a cache file that
// cannot be read is ignored and rewritten. Compiler warnings are reported
// only by the call that compiles.
func LoadRulesCached(cacheDir string, paths ...string) (*Rules, error) {
	if len(paths) == 0 {
		return nil, &RulesError{File: "(none)", Msg: "no rule files given"}
	}
	srcs, err := listSources(paths)
	if err != nil {
		return nil, err
	}
	listed := append([]ruleSrc(nil), srcs...)
	if cacheDir != "" {
		if r := loadByStamp(cacheDir, listed); r != nil {
			return r, nil
		}
	}
	if err := readSources(srcs); err != nil {
		return nil, err
	}
	if len(srcs) == 1 && srcs[0].compiled {
		return loadCompiled(srcs[0].file, srcs[0].data)
	}
	for _, s := range srcs {
		if s.compiled {
			return nil, &RulesError{File: s.file, Msg: "compiled rules cannot be combined with other rule files"}
		}
	}
	incl, err := findIncludes(srcs)
	if err != nil {
		return nil, err
	}
	srcs = dropIncluded(srcs, incl)

	h := sha256.New()
	used := map[string]int{}
	for i := range srcs {
		srcs[i].ns = uniqueNamespace(used, srcs[i].ns)
		digestSource(h, srcs[i].ns, srcs[i].data)
	}
	// Included files, by path relative to the first source's directory
	// where possible (so the digest does not depend on where the rule tree
	// lies), in sorted order.
	base := filepath.Dir(srcs[0].file)
	var inclNames []string
	inclRel := map[string]string{}
	for p := range incl.data {
		rel, err := filepath.Rel(base, p)
		if err != nil {
			rel = p
		}
		inclRel[rel] = p
		inclNames = append(inclNames, rel)
	}
	sort.Strings(inclNames)
	for _, n := range inclNames {
		digestSource(h, "include:"+filepath.ToSlash(n), incl.data[inclRel[n]])
	}
	sum := h.Sum(nil)

	var cacheFile string
	key := cacheKey(sum)
	if cacheDir != "" {
		cacheFile = filepath.Join(cacheDir, key+".yarc")
		if r := loadCache(cacheFile, srcs, sum); r != nil {
			if err := saveStampIndex(cacheDir, listed, r, key, incl); err != nil {
				r.cacheErr = fmt.Errorf("scan: rules cache %s: %w", cacheDir, err)
			}
			return r, nil
		}
	}

	c, err := newCompiler()
	if err != nil {
		return nil, err
	}
	defer c.Destroy()
	unseen := false
	var inclErr error
	var cur string // the source being compiled (libyara names none for AddString)
	c.SetIncludeCallback(func(name, from, _ string) []byte {
		if from == "" {
			from = cur
		}
		p := incl.resolve(name, from)
		if b, ok := incl.data[p]; ok {
			return b
		}
		b, err := readRuleFile(p)
		if err != nil {
			// Only the first error counts: after a syntax error libyara
			// goes on with a confused idea of the including file.
			if inclErr == nil && len(c.Errors) == 0 {
				inclErr = &RulesError{File: from, Msg: fmt.Sprintf("include %q", name), Err: err}
			}
			return nil
		}
		unseen = true // not in the digest: do not cache
		incl.data[p] = b
		return b
	})
	r := &Rules{}
	for _, s := range srcs {
		cur = incl.alias[s.file]
		if err := c.AddString(string(s.data), s.ns); err != nil {
			if inclErr != nil {
				return nil, inclErr
			}
			return nil, compileError(c, s.file, err)
		}
		r.sources = append(r.sources, RuleSource{Path: s.file, Namespace: s.ns})
	}
	r, err = r.finish(c, sum)
	if err != nil {
		return nil, err
	}
	if cacheFile != "" && !unseen {
		err := saveCache(cacheFile, r.y)
		if err == nil {
			err = saveStampIndex(cacheDir, listed, r, key, incl)
		}
		if err != nil {
			r.cacheErr = fmt.Errorf("scan: rules cache %s: %w", cacheDir, err)
		}
	}
	return r, nil
}

// ErrRulesVersion is the category of compiled rules written by a libyara
// of another file format version.
var ErrRulesVersion = errors.New("compiled yara rules of another libyara version")

// maxRuleFile bounds one rule file (source or compiled).
const maxRuleFile = 1 << 30

type ruleSrc struct {
	st       fs.FileInfo
	file     string
	ns       string
	data     []byte
	walked   bool // found by a directory walk (not named)
	compiled bool
}

func readRuleFile(p string) ([]byte, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if st.Size() > maxRuleFile {
		return nil, fmt.Errorf("%d bytes, more than %d", st.Size(), maxRuleFile)
	}
	return os.ReadFile(p)
}

func isCompiled(b []byte) bool { return len(b) >= 4 && string(b[:4]) == "YARA" }

func readSources(srcs []ruleSrc) error {
	for i := range srcs {
		data, err := readRuleFile(srcs[i].file)
		if err != nil {
			return &RulesError{File: srcs[i].file, Err: err}
		}
		srcs[i].data, srcs[i].compiled = data, isCompiled(data)
	}
	return nil
}

// listSources expands files and directories into rule sources (not read
// yet), with their file status.
func listSources(paths []string) ([]ruleSrc, error) {
	var srcs []ruleSrc
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, &RulesError{File: p, Err: err}
		}
		if !st.IsDir() {
			srcs = append(srcs, ruleSrc{file: p, ns: filepath.Base(p), st: st})
			continue
		}
		// WalkDir does not follow a symlink, not even the root's.
		root := p
		if lst, err := os.Lstat(p); err == nil && lst.Mode()&fs.ModeSymlink != 0 {
			if root, err = filepath.EvalSymlinks(p); err != nil {
				return nil, &RulesError{File: p, Err: err}
			}
		}
		var found []ruleSrc
		err = filepath.WalkDir(root, func(fp string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !isRuleFile(d.Name()) {
				return nil
			}
			rel, err := filepath.Rel(root, fp)
			if err != nil {
				return err
			}
			st, err := os.Stat(fp)
			if err != nil {
				return err
			}
			found = append(found, ruleSrc{file: fp, ns: filepath.ToSlash(rel), walked: true, st: st})
			return nil
		})
		if err != nil {
			return nil, &RulesError{File: p, Err: err}
		}
		if len(found) == 0 {
			return nil, &RulesError{File: p, Msg: "no .yar or .yara files in directory"}
		}
		sort.Slice(found, func(i, j int) bool { return found[i].ns < found[j].ns })
		srcs = append(srcs, found...)
	}
	return srcs, nil
}

// stamp identifies a version of a file without reading it: size, mtime,
// ctime (which every write moves and no one can set back), inode and
// device.
func stamp(st fs.FileInfo) string {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("%d:%d.%09d:%d.%09d:%d:%d", st.Size(), sys.Mtim.Sec, sys.Mtim.Nsec, sys.Ctim.Sec, sys.Ctim.Nsec, sys.Ino, sys.Dev)
	}
	return fmt.Sprintf("%d:%d", st.Size(), st.ModTime().UnixNano())
}

// racy reports whether a file changed so recently that a later change
// within the same timestamp tick could keep its stamp (git's "racily
// clean" entries): such a set is not indexed by stamp.
func racy(st fs.FileInfo) bool {
	t := st.ModTime()
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		if c := time.Unix(sys.Ctim.Sec, sys.Ctim.Nsec); c.After(t) {
			t = c
		}
	}
	return time.Since(t) < racyWindow
}

// racyWindow is how recent a change makes a file racy.
var racyWindow = 2 * time.Second

// stampIndex is what the cache keeps about a rule set by the stamps of its
// files, so that a later load with unchanged files reads none of them.
type stampIndex struct {
	Key      string           `json:"key"`    // content cache key (the .yarc name)
	Digest   string           `json:"digest"` // Rules.Digest
	Sources  []RuleSource     `json:"sources"`
	Includes []stampedInclude `json:"includes"`
}

type stampedInclude struct {
	Path  string `json:"path"`
	Stamp string `json:"stamp"`
}

// stampKey names the stamp index of the listed sources.
func stampKey(srcs []ruleSrc) string {
	h := sha256.New()
	fmt.Fprintf(h, "vmscope rules stamps 1\n%s\n", cacheKey(nil))
	for _, s := range srcs {
		abs, _ := filepath.Abs(s.file)
		fmt.Fprintf(h, "%q %q %t %s\n", abs, s.ns, s.walked, stamp(s.st))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// loadByStamp loads the cached rules of srcs when none of their files, nor
// the files they include, changed since the index was written.
func loadByStamp(cacheDir string, srcs []ruleSrc) *Rules {
	idxFile := filepath.Join(cacheDir, stampKey(srcs)+".idx")
	b, err := os.ReadFile(idxFile)
	if err != nil || len(b) > maxRuleFile {
		return nil
	}
	var idx stampIndex
	if json.Unmarshal(b, &idx) != nil || len(idx.Key) != 64 || len(idx.Sources) == 0 {
		return nil
	}
	for _, in := range idx.Includes {
		st, err := os.Stat(in.Path)
		if err != nil || stamp(st) != in.Stamp {
			return nil
		}
	}
	y, err := yara.LoadRules(filepath.Join(cacheDir, idx.Key+".yarc"))
	if err != nil {
		return nil
	}
	touch(filepath.Join(cacheDir, idx.Key+".yarc"))
	touch(idxFile)
	sum, err := hex.DecodeString(idx.Digest)
	if err != nil {
		return nil
	}
	r := &Rules{cached: true, byStamp: true, sources: idx.Sources}
	r.setRules(y, sum)
	return r
}

// saveStampIndex writes the stamp index of a rule set just loaded by
// content (atomically), unless a file of it is racy.
func saveStampIndex(cacheDir string, listed []ruleSrc, r *Rules, key string, incl *includeSet) error {
	idx := stampIndex{Key: key, Digest: r.digest, Sources: r.sources}
	for _, s := range listed {
		if racy(s.st) {
			return nil
		}
	}
	var paths []string
	for p := range incl.data {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil || racy(st) {
			return nil
		}
		idx.Includes = append(idx.Includes, stampedInclude{p, stamp(st)})
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(cacheDir, stampKey(listed)+".idx"), func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// includeSet is every file the sources include, directly or not, by
// absolute path, as found by reading their include directives.
type includeSet struct {
	data map[string][]byte
	// by is, for each included file, the files that include it.
	by map[string][]string
	// alias maps a name libyara reports as the including file (an
	// include as written) to the path it was resolved to.
	alias map[string]string
}

// includeNames returns the file names of the include directives of a
// rule source: `include "name"` at the start of a line (after blanks).
// It is a plain byte scan (a regexp over megabytes of rules costs more
// than loading them compiled).
func includeNames(src []byte) []string {
	var out []string
	const kw = "include"
	for off := 0; ; {
		i := bytes.Index(src[off:], []byte(kw))
		if i < 0 {
			return out
		}
		i += off
		off = i + len(kw)
		// Only blanks between the line start and the keyword.
		j := i - 1
		for j >= 0 && (src[j] == ' ' || src[j] == '\t') {
			j--
		}
		if j >= 0 && src[j] != '\n' && src[j] != '\r' {
			continue
		}
		k := off
		for k < len(src) && (src[k] == ' ' || src[k] == '\t') {
			k++
		}
		if k == off || k >= len(src) || src[k] != '"' {
			continue
		}
		var name []byte
		k++
		for ; k < len(src) && src[k] != '"' && src[k] != '\n'; k++ {
			if src[k] == '\\' && k+1 < len(src) && src[k+1] != '\n' {
				k++
			}
			name = append(name, src[k])
		}
		if k < len(src) && src[k] == '"' {
			out = append(out, string(name))
			off = k + 1
		}
	}
}

// maxIncludes bounds the include graph (files), against include loops
// and hostile rule trees.
const maxIncludes = 10000

// resolve is the path an include of name from the file from refers to:
// name itself when absolute, else relative to from's directory.
func (in *includeSet) resolve(name, from string) string {
	if filepath.IsAbs(name) {
		return filepath.Clean(name)
	}
	if a, ok := in.alias[from]; ok {
		from = a
	}
	abs, err := filepath.Abs(filepath.Join(filepath.Dir(from), name))
	if err != nil {
		return filepath.Join(filepath.Dir(from), name)
	}
	in.alias[name] = abs
	return abs
}

// findIncludes reads the include directives of the sources, and of the
// files they include, transitively. A directive whose file does not exist
// is left to libyara (which reports it with its line); one that reads
// inside a comment is harmless (the file is only hashed).
func findIncludes(srcs []ruleSrc) (*includeSet, error) {
	in := &includeSet{data: map[string][]byte{}, by: map[string][]string{}, alias: map[string]string{}}
	type item struct {
		file string
		data []byte
	}
	var queue []item
	for _, s := range srcs {
		abs, err := filepath.Abs(s.file)
		if err != nil {
			abs = s.file
		}
		in.alias[s.file] = abs
		queue = append(queue, item{abs, s.data})
	}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		for _, name := range includeNames(it.data) {
			p := name
			if !filepath.IsAbs(p) {
				p = filepath.Join(filepath.Dir(it.file), p)
			}
			p = filepath.Clean(p)
			in.by[p] = append(in.by[p], it.file)
			if _, seen := in.data[p]; seen {
				continue
			}
			b, err := readRuleFile(p)
			if err != nil {
				continue // libyara reports it when compiling
			}
			if len(in.data) >= maxIncludes {
				return nil, &RulesError{File: it.file, Msg: fmt.Sprintf("more than %d included files", maxIncludes)}
			}
			in.data[p] = b
			queue = append(queue, item{p, b})
		}
	}
	return in, nil
}

// dropIncluded removes the files of directory walks that another source
// includes: they are compiled where they are included.
func dropIncluded(srcs []ruleSrc, in *includeSet) []ruleSrc {
	out := srcs[:0]
	for _, s := range srcs {
		if s.walked {
			abs, err := filepath.Abs(s.file)
			if err == nil && len(in.by[abs]) > 0 {
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

// cacheKey names a compiled rule set in the cache: the source digest, the
// external variables with their defaults, the libyara version and the
// compiled format version.
func cacheKey(digest []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "vmscope rules cache 1\nlibyara %s\nformat %d\n", LibyaraVersion, CompiledRulesVersion)
	for _, k := range externalNames {
		fmt.Fprintf(h, "external %q=%q\n", k, Externals[k])
	}
	h.Write(digest)
	return hex.EncodeToString(h.Sum(nil))
}

// loadCache loads a cached rule set, or returns nil when there is none
// that libyara accepts.
func loadCache(file string, srcs []ruleSrc, sum []byte) *Rules {
	// libyara's own file loader (stdio) rather than a Go stream: it reads
	// the relocations a few bytes at a time, each a cgo callback through
	// a stream.
	y, err := yara.LoadRules(file)
	if err != nil {
		return nil
	}
	touch(file)
	r := &Rules{cached: true}
	for _, s := range srcs {
		r.sources = append(r.sources, RuleSource{Path: s.file, Namespace: s.ns})
	}
	r.setRules(y, sum)
	return r
}

// saveCache writes y to file atomically, and prunes the cache.
func saveCache(file string, y *yara.Rules) error {
	if err := writeAtomic(file, y.Write); err != nil {
		return err
	}
	pruneCache(filepath.Dir(file), time.Now())
	return nil
}

// cacheMaxAge is how long a compiled rule set unused stays in the cache
// (every load refreshes its time), so that rule updates do not pile up.
const cacheMaxAge = 30 * 24 * time.Hour

// touch marks a cache file used now.
func touch(file string) {
	now := time.Now()
	os.Chtimes(file, now, now)
}

// pruneCache removes compiled rule sets unused for cacheMaxAge, stamp
// indexes of that age, and temporary files a crashed writer left a day
// ago. Errors are ignored: the cache is an optimization.
func pruneCache(dir string, now time.Time) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		n := e.Name()
		age := cacheMaxAge
		switch {
		case strings.HasPrefix(n, ".tmp-"):
			age = 24 * time.Hour
		case strings.HasSuffix(n, ".yarc") || strings.HasSuffix(n, ".idx"):
		default:
			continue
		}
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && now.Sub(fi.ModTime()) > age {
			os.Remove(filepath.Join(dir, n))
		}
	}
}

// writeAtomic writes file through write into a temporary file of the same
// directory, synced, then renamed over file: readers see the old file or
// the whole new one.
func writeAtomic(file string, write func(io.Writer) error) error {
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := write(bw); err != nil {
		tmp.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// loadCompiled loads yarac output. The header is checked first, so that a
// file of another format version gets a clear error rather than libyara's
// code.
func loadCompiled(file string, data []byte) (*Rules, error) {
	if len(data) < 6 {
		return nil, &RulesError{File: file, Msg: "not compiled YARA rules: truncated header"}
	}
	if v := int(data[4]); v != CompiledRulesVersion {
		return nil, &RulesError{File: file, Msg: fmt.Sprintf("compiled rules of format version %d; this vmscope's libyara %s reads version %d: compile them with the yarac of libyara %s, or pass the sources", v, LibyaraVersion, CompiledRulesVersion, LibyaraVersion), Err: ErrRulesVersion}
	}
	y, err := yara.LoadRules(file)
	if err != nil {
		return nil, &RulesError{File: file, Msg: "not valid compiled YARA rules", Err: err}
	}
	sum := sha256.Sum256(data)
	h := sha256.New()
	digestSource(h, "compiled", sum[:])
	r := &Rules{compiled: true, sources: []RuleSource{{Path: file}}}
	r.setRules(y, h.Sum(nil))
	// The externals it was compiled with: the string ones of ours are set
	// per file; defining one it lacks fails.
	r.ext = map[string]bool{}
	for _, k := range externalNames {
		if y.DefineVariable(k, Externals[k]) == nil {
			r.ext[k] = true
		}
	}
	return r, nil
}

// DefaultRules compiles the embedded default rule set (scan/rules/*.yar,
// documented in scan/rules/README.md). Each file's namespace is its base
// name ("webshell.yar").
func DefaultRules() (*Rules, error) {
	names, err := fs.Glob(defaultRulesFS, "rules/*.yar")
	if err != nil {
		return nil, &RulesError{File: "embedded", Err: err}
	}
	sort.Strings(names)
	c, err := newCompiler()
	if err != nil {
		return nil, err
	}
	defer c.Destroy()
	h := sha256.New()
	r := &Rules{}
	for _, n := range names {
		data, err := defaultRulesFS.ReadFile(n)
		if err != nil {
			return nil, &RulesError{File: "embedded:" + n, Err: err}
		}
		ns := path.Base(n)
		digestSource(h, ns, data)
		if err := c.AddString(string(data), ns); err != nil {
			return nil, compileError(c, "embedded:"+n, err)
		}
		r.sources = append(r.sources, RuleSource{Path: "embedded:" + n, Namespace: ns})
	}
	return r.finish(c, h.Sum(nil))
}

func isRuleFile(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".yar" || ext == ".yara"
}

func uniqueNamespace(used map[string]int, ns string) string {
	used[ns]++
	if n := used[ns]; n > 1 {
		cand := fmt.Sprintf("%s#%d", ns, n)
		for used[cand] > 0 {
			n++
			cand = fmt.Sprintf("%s#%d", ns, n)
		}
		used[cand]++
		return cand
	}
	return ns
}

func digestSource(h interface{ Write([]byte) (int, error) }, ns string, data []byte) {
	fmt.Fprintf(h, "%d:%s\n%d:", len(ns), ns, len(data))
	h.Write(data)
}

func newCompiler() (*yara.Compiler, error) {
	c, err := yara.NewCompiler()
	if err != nil {
		return nil, &RulesError{File: "(compiler)", Err: err}
	}
	for _, k := range externalNames {
		if err := c.DefineVariable(k, Externals[k]); err != nil {
			c.Destroy()
			return nil, &RulesError{File: "(compiler)", Msg: "define external " + k, Err: err}
		}
	}
	return c, nil
}

// compileError turns the compiler's first error message into a RulesError.
func compileError(c *yara.Compiler, file string, err error) error {
	if len(c.Errors) > 0 {
		m := c.Errors[0]
		f := file
		// An error inside an included file names that file.
		if m.Filename != "" && !strings.HasPrefix(file, "embedded:") {
			f = m.Filename
		}
		return &RulesError{File: f, Line: m.Line, Msg: m.Text}
	}
	return &RulesError{File: file, Err: err}
}

func (r *Rules) finish(c *yara.Compiler, sum []byte) (*Rules, error) {
	for _, w := range c.Warnings {
		r.warnings = append(r.warnings, fmt.Sprintf("%s:%d: %s", w.Filename, w.Line, w.Text))
	}
	y, err := c.GetRules()
	if err != nil {
		return nil, &RulesError{File: "(compiler)", Err: err}
	}
	r.setRules(y, sum)
	return r, nil
}

// setRules takes y as the rule set with digest sum and counts its rules.
// Their tags and meta are read on first use (metaIndex): a poll with
// nothing to scan never pays for thousands of them.
func (r *Rules) setRules(y *yara.Rules, sum []byte) {
	r.y = y
	r.digest = hex.EncodeToString(sum)
	for _, rule := range y.GetRules() {
		if !rule.IsPrivate() {
			r.count++
		}
	}
}

// metaIndex returns the (non-private) rules by namespace and name, built
// once.
func (r *Rules) metaIndex() map[ruleKey]RuleInfo {
	r.metaOnce.Do(func() {
		r.meta = map[ruleKey]RuleInfo{}
		for _, rule := range r.y.GetRules() {
			if rule.IsPrivate() {
				continue
			}
			info := RuleInfo{
				Namespace: rule.Namespace(),
				Rule:      rule.Identifier(),
				Tags:      sortedTags(rule.Tags()),
				Meta:      metaMap(rule.Metas()),
			}
			r.meta[ruleKey{info.Namespace, info.Rule}] = info
		}
	})
	return r.meta
}

// Digest is the hex sha256 of the rule sources (namespace and bytes of every
// file, in compile order): two rule sets with the same digest give the same
// verdicts. Poll state records it to know when a re-scan is due.
func (r *Rules) Digest() string { return r.digest }

// Count is the number of (non-private) rules.
func (r *Rules) Count() int { return r.count }

// Sources lists the compiled files and their namespaces, in compile order.
func (r *Rules) Sources() []RuleSource { return append([]RuleSource(nil), r.sources...) }

// Warnings are the compiler's warnings ("file:line: text").
func (r *Rules) Warnings() []string { return append([]string(nil), r.warnings...) }

// Info lists the (non-private) rules, sorted by namespace and name.
func (r *Rules) Info() []RuleInfo {
	meta := r.metaIndex()
	out := make([]RuleInfo, 0, len(meta))
	for _, v := range meta {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Rule < out[j].Rule
	})
	return out
}

func (r *Rules) info(ns, rule string) (RuleInfo, bool) {
	v, ok := r.metaIndex()[ruleKey{ns, rule}]
	return v, ok
}

func sortedTags(t []string) []string {
	if len(t) == 0 {
		return nil
	}
	t = append([]string(nil), t...)
	sort.Strings(t)
	return t
}

// metaMap turns YARA meta into a map. YARA allows a key more than once; the
// first value is kept.
func metaMap(ms []yara.Meta) map[string]any {
	if len(ms) == 0 {
		return nil
	}
	m := make(map[string]any, len(ms))
	for _, x := range ms {
		if _, dup := m[x.Identifier]; !dup {
			m[x.Identifier] = x.Value
		}
	}
	return m
}
