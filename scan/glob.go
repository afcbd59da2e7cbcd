package scan

import (
	"fmt"
	"path"
	"strings"
)

// A pattern selects guest paths for WithInclude/WithExclude.
//
// Semantics (those of .gitignore and doublestar, which users expect):
//
//   - A pattern without '/' matches the base name at any depth:
//     "*.php" matches "/var/www/a/x.php".
//   - A pattern with '/' matches the whole path; a leading '/' is optional
//     (guest paths are absolute): "/etc/cron.d/*" and "etc/cron.d/*" are the
//     same.
//   - In a pattern with '/', a "**" segment matches zero or more path
//     segments: "/var/www/**/*.php", "/home/**", "**/.ssh/authorized_keys".
//   - Elsewhere the syntax is path.Match's: '*', '?', '[...]', '\\'; '*'
//     does not cross '/'.
//   - "dir/**" matches everything under dir (not dir itself).
type pattern struct {
	raw   string
	base  bool     // match the base name only
	parts []string // segments, "**" for any number of segments
}

func compilePattern(p string) (pattern, error) {
	if p == "" {
		return pattern{}, fmt.Errorf("scan: empty pattern: %w", path.ErrBadPattern)
	}
	pt := pattern{raw: p}
	if !strings.Contains(p, "/") {
		pt.base = true
		pt.parts = []string{p}
	} else {
		pt.parts = strings.Split(strings.Trim(p, "/"), "/")
	}
	for _, s := range pt.parts {
		if s == "**" {
			continue
		}
		if _, err := path.Match(s, ""); err != nil {
			return pattern{}, fmt.Errorf("scan: pattern %q: %w", p, err)
		}
	}
	return pt, nil
}

func (pt pattern) match(p string) bool {
	if pt.base {
		ok, _ := path.Match(pt.parts[0], path.Base(p))
		return ok
	}
	p = strings.Trim(p, "/")
	var segs []string
	if p != "" {
		segs = strings.Split(p, "/")
	}
	return matchSegs(pt.parts, segs)
}

func matchSegs(pat, segs []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for len(pat) > 0 && pat[0] == "**" {
				pat = pat[1:]
			}
			if len(pat) == 0 {
				return len(segs) > 0
			}
			for i := 0; i <= len(segs); i++ {
				if matchSegs(pat, segs[i:]) {
					return true
				}
			}
			return false
		}
		if len(segs) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], segs[0]); !ok {
			return false
		}
		pat, segs = pat[1:], segs[1:]
	}
	return len(segs) == 0
}

// selector applies include and exclude patterns: a path is selected when it
// matches no exclude and (no include was given or it matches an include).
type selector struct{ include, exclude []pattern }

func newSelector(include, exclude []string) (selector, error) {
	var s selector
	for _, p := range include {
		pt, err := compilePattern(p)
		if err != nil {
			return s, err
		}
		s.include = append(s.include, pt)
	}
	for _, p := range exclude {
		pt, err := compilePattern(p)
		if err != nil {
			return s, err
		}
		s.exclude = append(s.exclude, pt)
	}
	return s, nil
}

func (s selector) selected(p string) bool {
	for _, pt := range s.exclude {
		if pt.match(p) {
			return false
		}
	}
	if len(s.include) == 0 {
		return true
	}
	for _, pt := range s.include {
		if pt.match(p) {
			return true
		}
	}
	return false
}
