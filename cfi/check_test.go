package cfi_test

import (
	"context"
	"testing"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/internal/fixture"
)

// TestCheckGuestClean runs every check on the guest fixture's dumps (no
// rootkit; the KASLR, nokaslr and 5-level boots): zero findings, zero
// problems, and every check ran.
func TestCheckGuestClean(t *testing.T) {
	for _, mode := range []string{"kaslr", "nokaslr", "la57"} {
		t.Run(mode, func(t *testing.T) {
			s, k := openKernel(t, fixture.GuestPath(t, mode, "guest.elf"))
			rep, err := cfi.Check(context.Background(), k, cfi.WithCPUs(s.CPUs()))
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range rep.Checks {
				t.Logf("%s: %d checked, %d findings %s", st.Name, st.Checked, st.Findings, st.Skipped)
				if st.Skipped != "" || st.Checked == 0 && st.Name != "kprobes" {
					t.Errorf("check %s did not run: %q", st.Name, st.Skipped)
				}
			}
			for _, f := range rep.Findings {
				t.Errorf("finding: %v", f)
			}
			for _, p := range rep.Problems {
				t.Errorf("problem: %v", p)
			}
		})
	}
}
