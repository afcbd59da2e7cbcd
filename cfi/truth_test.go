package cfi_test

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// consoleTruth is what a fixture guest printed about itself on its serial
// console (testdata/guest/init.sh's sections, and the rootkit wrapper's
// lines), parsed independently of vmscope.
type consoleTruth struct {
	sections map[string][]string
	lines    []string
	kallsyms []truthSym
	modules  []truthModule
}

type truthSym struct {
	addr   uint64
	typ    byte
	name   string
	module string
}

type truthModule struct {
	name string
	addr uint64
}

func loadConsole(t testing.TB, path string) *consoleTruth {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ct := &consoleTruth{sections: map[string][]string{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var cur string
	in := false
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		ct.lines = append(ct.lines, l)
		// a marker may follow terminal control bytes on its line
		if i := strings.Index(l, "=== "); i > 0 && !in {
			l = l[i:]
		}
		if name, ok := strings.CutPrefix(l, "=== BEGIN "); ok {
			cur, in = strings.TrimSuffix(name, " ==="), true
			continue
		}
		if strings.HasPrefix(l, "=== END ") {
			in = false
			continue
		}
		if in {
			ct.sections[cur] = append(ct.sections[cur], l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, l := range ct.sections["kallsyms"] {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			continue
		}
		s := truthSym{addr: a, typ: f[1][0], name: f[2]}
		if len(f) > 3 {
			s.module = strings.Trim(f[3], "[]")
		}
		ct.kallsyms = append(ct.kallsyms, s)
	}
	for _, l := range ct.sections["modules"] {
		f := strings.Fields(l)
		if len(f) < 6 {
			continue
		}
		a, _ := strconv.ParseUint(strings.TrimPrefix(f[5], "0x"), 16, 64)
		ct.modules = append(ct.modules, truthModule{name: f[0], addr: a})
	}
	if len(ct.kallsyms) == 0 {
		t.Fatalf("%s: no kallsyms section", path)
	}
	return ct
}

// rootkit is the rootkit section's KEY=VALUE pairs
// (testdata/rootkit/init.sh), the hexadecimal addresses parsed.
func (ct *consoleTruth) rootkit(t testing.TB) (map[string]string, map[string]uint64) {
	t.Helper()
	kv, addr := map[string]string{}, map[string]uint64{}
	lines, ok := ct.sections["rootkit"]
	if !ok {
		t.Fatal("no rootkit section on the console")
	}
	for _, l := range lines {
		for _, f := range strings.Fields(l) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			kv[k] = v
			if a, err := strconv.ParseUint(v, 16, 64); err == nil && len(v) == 16 {
				addr[k] = a
			}
		}
	}
	return kv, addr
}
