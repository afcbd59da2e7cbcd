package lvm

import (
	"fmt"
	"strconv"
	"strings"
)

// Limits of the metadata text parser: what a hostile text may ask for.
const (
	maxDepth    = 16      // nested sections
	maxString   = 1 << 16 // bytes of one string or identifier
	maxElements = 1 << 18 // values, keys and sections in one text
)

// Value is one value of LVM's config syntax: an integer, a string, a list
// of values, or a section.
type Value struct {
	Int  int64
	Str  string
	List []Value
	Sect *Section
	Kind byte // 'i', 's', 'l' or '{'
}

// Section is a "name { ... }" block: its keys in order of appearance.
type Section struct {
	Name string
	Keys []string
	Vals map[string]Value
}

// Get returns the value of key, or a zero Value (Kind 0).
func (s *Section) Get(key string) Value {
	if s == nil {
		return Value{}
	}
	return s.Vals[key]
}

// Sub returns the section key, or nil.
func (s *Section) Sub(key string) *Section { return s.Get(key).Sect }

// Subs returns the sections of s in order.
func (s *Section) Subs() []*Section {
	if s == nil {
		return nil
	}
	var out []*Section
	for _, k := range s.Keys {
		if v := s.Vals[k]; v.Kind == '{' {
			out = append(out, v.Sect)
		}
	}
	return out
}

// Int returns the integer at key and whether it is one.
func (s *Section) Int(key string) (int64, bool) {
	v := s.Get(key)
	return v.Int, v.Kind == 'i'
}

// Str returns the string at key ("" when absent or not a string).
func (s *Section) Str(key string) string {
	v := s.Get(key)
	if v.Kind != 's' {
		return ""
	}
	return v.Str
}

// Strings returns the strings of the list at key.
func (s *Section) Strings(key string) []string {
	var out []string
	for _, v := range s.Get(key).List {
		if v.Kind == 's' {
			out = append(out, v.Str)
		}
	}
	return out
}

// parser reads LVM's config syntax: "key = value", "name { ... }",
// values are integers, "strings" and [lists], '#' starts a comment. Every
// loop advances the position; depth, string length and element count are
// bounded.
type parser struct {
	s     []byte
	pos   int
	elems int
	base  int64 // offset of the text, for errors
}

// ParseConfig parses a metadata text (base: its offset, for errors) into
// its root section.
func ParseConfig(text []byte, base int64) (*Section, error) {
	p := &parser{s: text, base: base}
	root := &Section{Vals: map[string]Value{}}
	if err := p.items(root, 0); err != nil {
		return nil, err
	}
	return root, nil
}

func (p *parser) errf(format string, args ...any) error {
	return corrupt("metadata text", p.base+int64(p.pos), format, args...)
}

// skip passes blanks and comments.
func (p *parser) skip() {
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			p.pos++
		case c == '#':
			for p.pos < len(p.s) && p.s[p.pos] != '\n' {
				p.pos++
			}
		case c == 0: // the text in the buffer ends with a NUL
			p.pos = len(p.s)
		default:
			return
		}
	}
}

func isIdent(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '.' || c == '+' || c == '-' || c == '/'
}

func (p *parser) ident() (string, error) {
	start := p.pos
	for p.pos < len(p.s) && isIdent(p.s[p.pos]) {
		p.pos++
		if p.pos-start > maxString {
			return "", p.errf("identifier longer than %d bytes", maxString)
		}
	}
	if p.pos == start {
		if p.pos >= len(p.s) {
			return "", p.errf("unexpected end of text")
		}
		return "", p.errf("unexpected byte %q", p.s[p.pos])
	}
	return string(p.s[start:p.pos]), nil
}

func (p *parser) count() error {
	p.elems++
	if p.elems > maxElements {
		return p.errf("more than %d elements", maxElements)
	}
	return nil
}

// items parses "key = value" and "name { ... }" into sec until '}' (depth >
// 0) or the end of the text (depth 0).
func (p *parser) items(sec *Section, depth int) error {
	for {
		p.skip()
		if p.pos >= len(p.s) {
			if depth > 0 {
				return p.errf("section %q not closed", sec.Name)
			}
			return nil
		}
		if p.s[p.pos] == '}' {
			if depth == 0 {
				return p.errf("'}' without a section")
			}
			p.pos++
			return nil
		}
		if err := p.count(); err != nil {
			return err
		}
		key, err := p.ident()
		if err != nil {
			return err
		}
		if _, dup := sec.Vals[key]; dup {
			return p.errf("key %q twice in section %q", key, sec.Name)
		}
		p.skip()
		if p.pos >= len(p.s) {
			return p.errf("unexpected end of text after %q", key)
		}
		var v Value
		switch p.s[p.pos] {
		case '{':
			if depth+1 > maxDepth {
				return p.errf("sections nested deeper than %d", maxDepth)
			}
			p.pos++
			sub := &Section{Name: key, Vals: map[string]Value{}}
			if err := p.items(sub, depth+1); err != nil {
				return err
			}
			v = Value{Kind: '{', Sect: sub}
		case '=':
			p.pos++
			if v, err = p.value(true); err != nil {
				return err
			}
		default:
			return p.errf("want '=' or '{' after %q, found %q", key, p.s[p.pos])
		}
		sec.Keys = append(sec.Keys, key)
		sec.Vals[key] = v
	}
}

// value parses an integer, a string or (when list) a list of them.
func (p *parser) value(list bool) (Value, error) {
	p.skip()
	if err := p.count(); err != nil {
		return Value{}, err
	}
	if p.pos >= len(p.s) {
		return Value{}, p.errf("unexpected end of text, want a value")
	}
	switch c := p.s[p.pos]; {
	case c == '"':
		s, err := p.str()
		return Value{Kind: 's', Str: s}, err
	case c == '[' && list:
		p.pos++
		v := Value{Kind: 'l'}
		for {
			p.skip()
			if p.pos < len(p.s) && p.s[p.pos] == ']' {
				p.pos++
				return v, nil
			}
			if len(v.List) > 0 {
				if p.pos >= len(p.s) || p.s[p.pos] != ',' {
					return Value{}, p.errf("want ',' or ']' in a list")
				}
				p.pos++
			}
			e, err := p.value(false)
			if err != nil {
				return Value{}, err
			}
			v.List = append(v.List, e)
		}
	case c == '-' || c >= '0' && c <= '9':
		start := p.pos
		p.pos++
		for p.pos < len(p.s) && (p.s[p.pos] >= '0' && p.s[p.pos] <= '9' || p.s[p.pos] == '.') {
			p.pos++
			if p.pos-start > 64 {
				return Value{}, p.errf("number longer than 64 bytes")
			}
		}
		txt := string(p.s[start:p.pos])
		if strings.Contains(txt, ".") { // a float: kept as text
			return Value{Kind: 's', Str: txt}, nil
		}
		n, err := strconv.ParseInt(txt, 10, 64)
		if err != nil {
			return Value{}, p.errf("number %q: %v", txt, err)
		}
		return Value{Kind: 'i', Int: n}, nil
	default:
		return Value{}, p.errf("unexpected byte %q, want a value", c)
	}
}

// str parses a "quoted" string with backslash escapes.
func (p *parser) str() (string, error) {
	p.pos++ // opening quote
	var b strings.Builder
	for {
		if p.pos >= len(p.s) {
			return "", p.errf("string not closed")
		}
		c := p.s[p.pos]
		p.pos++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if p.pos >= len(p.s) {
				return "", p.errf("string not closed")
			}
			c = p.s[p.pos]
			p.pos++
		}
		if b.Len() >= maxString {
			return "", p.errf("string longer than %d bytes", maxString)
		}
		b.WriteByte(c)
	}
}

// String renders v for messages.
func (v Value) String() string {
	switch v.Kind {
	case 'i':
		return strconv.FormatInt(v.Int, 10)
	case 's':
		return strconv.Quote(v.Str)
	case 'l':
		return fmt.Sprintf("list of %d", len(v.List))
	case '{':
		return "section " + v.Sect.Name
	}
	return "none"
}
