package scan

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
)

// fileTypeRows is the filetype table of SCHEMA.md: one row per value, its
// magics in hex, sorted.
func fileTypeRows() []string {
	by := map[string][]string{}
	for _, s := range fileTypeSigs {
		var h []string
		for _, c := range []byte(s.magic) {
			h = append(h, fmt.Sprintf("%02X", c))
		}
		by[s.name] = append(by[s.name], "`"+strings.Join(h, " ")+"`")
	}
	var rows []string
	for name, m := range by {
		rows = append(rows, fmt.Sprintf("| `%s` | %s |", name, strings.Join(m, ", ")))
	}
	sort.Strings(rows)
	return rows
}

// TestSchemaFileTypeTable: SCHEMA.md documents every filetype value with
// exactly the magics vmscope uses.
func TestSchemaFileTypeTable(t *testing.T) {
	doc, err := os.ReadFile("SCHEMA.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := fileTypeRows()
	if *update {
		i := strings.Index(string(doc), "| filetype | magic bytes (hex) |\n| --- | --- |\n")
		if i < 0 {
			t.Fatal("no filetype table header in SCHEMA.md")
		}
		head := string(doc[:i]) + "| filetype | magic bytes (hex) |\n| --- | --- |\n"
		rest := string(doc[i+len("| filetype | magic bytes (hex) |\n| --- | --- |\n"):])
		for strings.HasPrefix(rest, "| `") {
			rest = rest[strings.Index(rest, "\n")+1:]
		}
		doc = []byte(head + strings.Join(rows, "\n") + "\n" + rest)
		os.WriteFile("SCHEMA.md", doc, 0o644)
	}
	for _, r := range rows {
		if !strings.Contains(string(doc), r+"\n") {
			t.Errorf("SCHEMA.md lacks the row %s (run with -update)", r)
		}
	}
	if got := strings.Count(string(doc), "\n| `"); got < len(rows) {
		t.Errorf("SCHEMA.md has %d filetype rows, want %d", got, len(rows))
	}
	vals := FileTypes()
	if len(vals) != len(rows)+1 || vals[0] == "" {
		t.Errorf("FileTypes %v", vals)
	}
}
