package escape

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vmscope/vmscope/internal/fixture"
)

func TestOctal(t *testing.T) {
	for in, want := range map[string]string{
		"/etc/passwd":    "/etc/passwd",
		"/\xe9t\xe9.com": `/\351t\351.com`,
		"/\xe9t\xe8.com": `/\351t\350.com`,
		"/été":           "/été",
		"a\nb":           `a\012b`,
		`back\slash`:     `back\\slash`,
		"\x7f\x01":       `\177\001`,
		"c1\u0085":       `c1\302\205`,
		"":               "",
	} {
		if got := Octal(in); got != want {
			t.Errorf("Octal(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOctalLikeLs: for names the C locale's ls -b prints the same way
// (no valid non-ASCII UTF-8, whose treatment depends on the locale),
// Octal agrees with GNU ls -b byte for byte.
func TestOctalLikeLs(t *testing.T) {
	ls := fixture.Tool(t, "ls")
	dir := t.TempDir()
	names := []string{"\xe9t\xe9.com", "\xe9t\xe8.com", "tab\there", "del\x7f", "back\\slash", "plain.txt", "\x01\x02x"}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(ls, "-b", "-1", dir)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "QUOTING_STYLE=escape")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		got[l] = true
	}
	for _, n := range names {
		e := Octal(n)
		// ls -b uses C escapes for \t etc.; compare only names without them.
		if strings.ContainsAny(n, "\t") {
			continue
		}
		if !got[e] {
			t.Errorf("Octal(%q) = %q; ls -b printed %q", n, e, out)
		}
	}
}

func FuzzRoundTrip(f *testing.F) {
	for _, s := range []string{"/\xe9t\xe9.com", `a\b`, "\x00", "été", `\\\351`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := Octal(s)
		if !utf8.ValidString(e) {
			t.Fatalf("Octal(%q) = %q is not UTF-8", s, e)
		}
		back, ok := Unquote(e)
		if !ok || back != s {
			t.Fatalf("Unquote(Octal(%q)) = %q, %v", s, back, ok)
		}
		for _, c := range []byte(e) {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("Octal(%q) = %q keeps control byte %#x", s, e, c)
			}
		}
	})
}
