package scan

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

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
	meta     map[ruleKey]RuleInfo
}

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

// LoadRules compiles .yar/.yara files and directories of them.
//
// A directory is walked recursively; its *.yar and *.yara files are compiled
// in lexical order of their slash-separated path relative to the directory,
// and that relative path is their namespace ("webshells/php.yar"). A file
// given directly gets its base name as namespace. If two sources would get
// the same namespace, the later ones get a "#2", "#3"... suffix, so the
// namespaces depend only on the arguments and the tree. Rules are compiled
// once with [Externals] defined. include directives are resolved by libyara
// relative to the including file (they are not part of [Rules.Digest]).
func LoadRules(paths ...string) (*Rules, error) {
	if len(paths) == 0 {
		return nil, &RulesError{File: "(none)", Msg: "no rule files given"}
	}
	type src struct{ file, ns string }
	var srcs []src
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, &RulesError{File: p, Err: err}
		}
		if !st.IsDir() {
			srcs = append(srcs, src{p, filepath.Base(p)})
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(fp string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !isRuleFile(d.Name()) {
				return nil
			}
			rel, err := filepath.Rel(p, fp)
			if err != nil {
				return err
			}
			found = append(found, filepath.ToSlash(rel))
			return nil
		})
		if err != nil {
			return nil, &RulesError{File: p, Err: err}
		}
		if len(found) == 0 {
			return nil, &RulesError{File: p, Msg: "no .yar or .yara files in directory"}
		}
		sort.Strings(found)
		for _, rel := range found {
			srcs = append(srcs, src{filepath.Join(p, filepath.FromSlash(rel)), rel})
		}
	}

	c, err := newCompiler()
	if err != nil {
		return nil, err
	}
	defer c.Destroy()
	h := sha256.New()
	used := map[string]int{}
	r := &Rules{}
	for _, s := range srcs {
		ns := uniqueNamespace(used, s.ns)
		data, err := os.ReadFile(s.file)
		if err != nil {
			return nil, &RulesError{File: s.file, Err: err}
		}
		digestSource(h, ns, data)
		f, err := os.Open(s.file)
		if err != nil {
			return nil, &RulesError{File: s.file, Err: err}
		}
		err = c.AddFile(f, ns)
		f.Close()
		if err != nil {
			return nil, compileError(c, s.file, err)
		}
		r.sources = append(r.sources, RuleSource{Path: s.file, Namespace: ns})
	}
	return r.finish(c, h.Sum(nil))
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
	r.y = y
	r.digest = hex.EncodeToString(sum)
	r.meta = map[ruleKey]RuleInfo{}
	for _, rule := range y.GetRules() {
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
		r.count++
	}
	return r, nil
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
	out := make([]RuleInfo, 0, len(r.meta))
	for _, v := range r.meta {
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
	v, ok := r.meta[ruleKey{ns, rule}]
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
