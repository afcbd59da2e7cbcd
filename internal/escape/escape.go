// Package escape renders guest names, which are arbitrary bytes, as
// printable text the way `ls -b` does: a byte that is not part of valid
// UTF-8, a control character (below 0x20, 0x7f) and the C1 controls become
// a three-digit octal escape (\351), a backslash becomes \\. Everything
// else, including valid non-ASCII UTF-8, is kept. The mapping is
// reversible: [Unquote] gives the bytes back.
package escape

import (
	"strings"
	"unicode/utf8"
)

// needs reports whether r (n bytes wide) must be escaped.
func needs(r rune, n int) bool {
	return (r == utf8.RuneError && n == 1) || r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\\'
}

// Octal returns s with the bytes that are not printable as octal escapes
// (see the package doc). A string that needs none is returned as is.
func Octal(s string) string {
	clean := true
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if needs(r, n) {
			clean = false
			break
		}
		i += n
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case needs(r, n):
			for _, c := range []byte(s[i : i+n]) {
				b.WriteByte('\\')
				b.WriteByte('0' + c>>6)
				b.WriteByte('0' + c>>3&7)
				b.WriteByte('0' + c&7)
			}
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Unquote reverses Octal. It reports false for a string Octal cannot
// have produced (a lone backslash or a short escape).
func Unquote(s string) (string, bool) {
	if !strings.Contains(s, `\`) {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '\\' {
			b.WriteByte('\\')
			i++
			continue
		}
		if i+4 > len(s) {
			return "", false
		}
		v := 0
		for _, c := range []byte(s[i+1 : i+4]) {
			if c < '0' || c > '7' {
				return "", false
			}
			v = v*8 + int(c-'0')
		}
		if v > 0xff {
			return "", false
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), true
}
