package fsparse

import (
	"strconv"
	"strings"
	"testing"
)

// unescapeName inverts EscapeName with Go's own unquoting (its \ooo and
// \\ escapes are Go's), "\-" being the empty name.
func unescapeName(s string) (string, error) {
	if s == `\-` {
		return "", nil
	}
	return strconv.Unquote(`"` + strings.ReplaceAll(s, `"`, `\"`) + `"`)
}

// FuzzEscapeName: every escaped name is a valid, non-empty path element
// other than "." and "..", and unescapes to the name (so two names never
// share an escape); a name that needs no escape is kept.
func FuzzEscapeName(f *testing.F) {
	for _, s := range []string{"", ".", "..", "...", "a/b", "lnk/evil", "nul\x00x", `back\slash`, `\057`, `\-`, "é", "\xff\xfe", "a\nb", "\x7f", "ok"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		e := EscapeName(name)
		if e == "" || e == "." || e == ".." || strings.ContainsAny(e, "/\x00") {
			t.Fatalf("EscapeName(%q) = %q: not a path element", name, e)
		}
		got, err := unescapeName(e)
		if err != nil || got != name {
			t.Fatalf("EscapeName(%q) = %q unescapes to %q, %v", name, e, got, err)
		}
	})
}
