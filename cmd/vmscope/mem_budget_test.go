package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestMemDiscoveryBudget: the budget flags of mem reach kernel discovery,
// and a spent budget is an error naming the phase, how far it got and the
// flag that raises it (memory files of testdata/hostile-mem/build.sh).
func TestMemDiscoveryBudget(t *testing.T) {
	dir := filepath.Join(fixture.Root(), "testdata", "out-hostile-mem")
	if _, err := os.Stat(filepath.Join(dir, "pml4-spin.raw")); err != nil {
		fixture.Missing(t, "%s (bash testdata/hostile-mem/build.sh)", dir)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"mem", "info", filepath.Join(dir, "pml4-spin.raw"), "--discovery-max-candidates", "10"},
			[]string{"budget of candidates spent in the page tables phase", "10 PML4 candidates", "10 of 10 candidates tried", "raise it with --discovery-max-candidates"}},
		{[]string{"mem", "ps", filepath.Join(dir, "kallsyms-tables.raw"), "--discovery-max-read", "64MiB"},
			[]string{"budget of bytes spent in the kallsyms phase", "token tables tried", "of 67108864 bytes read", "raise it with --discovery-max-read"}},
	} {
		_, stderr, code := vmscope(t, tc.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2; stderr %s", tc.args, code, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: stderr %q does not say %q", tc.args, stderr, w)
			}
		}
	}
	for _, bad := range [][]string{{"--discovery-max-read", "0"}, {"--discovery-max-read", "lots"}, {"--discovery-max-candidates", "0"}} {
		_, stderr, code := vmscope(t, append([]string{"mem", "info", filepath.Join(dir, "pml4-spin.raw")}, bad...)...)
		if code != 2 || !strings.Contains(stderr, bad[0]) || !strings.Contains(stderr, "usage") {
			t.Errorf("%v: exit %d, stderr %q: want a usage error", bad, code, stderr)
		}
	}
}
