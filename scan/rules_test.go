package scan

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRulesSyntaxError(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "/a/good.yar", []byte("rule good { condition: true }\n"))
	write(t, dir, "/b/bad.yara", []byte("rule ok { condition: true }\n\nrule bad {\n  strings: $a = \"x\"\n  condition: $a and and\n}\n"))
	_, err := LoadRules(dir)
	if !errors.Is(err, ErrRules) {
		t.Fatalf("err %v is not ErrRules", err)
	}
	var re *RulesError
	if !errors.As(err, &re) {
		t.Fatalf("err %T", err)
	}
	if re.File != filepath.Join(dir, "b", "bad.yara") || re.Line != 5 {
		t.Errorf("RulesError %+v, want %s line 5", re, filepath.Join(dir, "b/bad.yara"))
	}
	if !strings.Contains(err.Error(), "bad.yara:5: ") {
		t.Errorf("message %q", err)
	}

	if _, err := LoadRules(filepath.Join(dir, "missing.yar")); !errors.Is(err, ErrRules) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	empty := t.TempDir()
	if _, err := LoadRules(empty); !errors.Is(err, ErrRules) {
		t.Errorf("empty dir: %v", err)
	}
}

func TestRulesNamespacesAndDigest(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "/z.yar", []byte("rule r { condition: true }\n"))
	write(t, dir, "/sub/a.yara", []byte("rule r { condition: false }\n"))
	single := filepath.Join(t.TempDir(), "z.yar")
	os.WriteFile(single, []byte("rule s { condition: true }\n"), 0o644)
	r, err := LoadRules(dir, single)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, s := range r.Sources() {
		ns = append(ns, s.Namespace)
	}
	if got := strings.Join(ns, " "); got != "sub/a.yara z.yar z.yar#2" {
		t.Errorf("namespaces %q", got)
	}
	if r.Count() != 3 {
		t.Errorf("count %d", r.Count())
	}
	r2, _ := LoadRules(dir, single)
	if r.Digest() != r2.Digest() || len(r.Digest()) != 64 {
		t.Errorf("digest %q vs %q", r.Digest(), r2.Digest())
	}
	os.WriteFile(single, []byte("rule s { condition: false }\n"), 0o644)
	r3, _ := LoadRules(dir, single)
	if r3.Digest() == r.Digest() {
		t.Error("digest did not change with the source")
	}
}

func TestDefaultRulesMeta(t *testing.T) {
	r, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	if r.Count() < 20 {
		t.Errorf("only %d default rules", r.Count())
	}
	readme, err := os.ReadFile("rules/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range r.Info() {
		for _, k := range []string{"description", "author", "severity", "date"} {
			if v, ok := info.Meta[k].(string); !ok || v == "" {
				t.Errorf("%s: meta %s missing", info.Rule, k)
			}
		}
		if info.Meta["author"] != "vmscope" {
			t.Errorf("%s: author %v", info.Rule, info.Meta["author"])
		}
		switch info.Meta["severity"] {
		case "low", "medium", "high", "critical":
		default:
			t.Errorf("%s: severity %v", info.Rule, info.Meta["severity"])
		}
		if ref, ok := info.Meta["reference"].(string); ok && !strings.HasPrefix(ref, "https://") {
			t.Errorf("%s: reference %q", info.Rule, ref)
		}
		if !strings.Contains(string(readme), "`"+info.Rule+"`") {
			t.Errorf("%s not documented in rules/README.md", info.Rule)
		}
	}
	if len(r.Warnings()) != 0 {
		t.Errorf("warnings: %v", r.Warnings())
	}
}

// Loki/signature-base style rules using the external variables compile.
func TestLokiStyleExternals(t *testing.T) {
	_, err := LoadRulesString(t, `
rule loki_style {
  meta: score = 70
  strings: $a = "x"
  condition: ( extension == ".jsp" or filename matches /\.php$/i or filepath contains "/tmp/" ) and
             filetype == "EXE" and owner != "root" and md5 != "" and $a
}`)
	if err != nil {
		t.Fatal(err)
	}
}
