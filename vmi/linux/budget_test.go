package linux_test

import (
	"context"
	"testing"

	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
)

// TestDiscoveryBudget: discovery of each real kernel of the fixture, from
// its vCPUs' CR3 and from the PML4 scan (no CPU state, as for a raw or
// LiME dump), spends less than 1/16 of DefaultBudget, in bytes and in
// candidates.
func TestDiscoveryBudget(t *testing.T) {
	ctx := context.Background()
	for _, mode := range guesttest.Modes {
		s := openDump(t, mode, guesttest.ELFDump)
		for _, cpus := range []bool{true, false} {
			var opts []linux.Option
			name := mode + "/scan"
			if cpus {
				opts, name = append(opts, linux.WithCPUs(s.CPUs())), mode+"/cpus"
			}
			k, err := linux.Discover(ctx, s, opts...)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			t.Logf("%s: spent %d bytes, %d candidates (all reads %d bytes); page tables from %s", name, k.Spent.Bytes, k.Spent.Candidates, k.BytesRead(), k.CR3From)
			if k.Spent.Bytes <= 0 || k.Spent.Candidates <= 0 {
				t.Errorf("%s: nothing spent: %+v", name, k.Spent)
			}
			if k.Spent.Bytes*16 > linux.DefaultBudget.Bytes || k.Spent.Candidates*16 > linux.DefaultBudget.Candidates {
				t.Errorf("%s: spent %+v, more than 1/16 of the default budget %+v", name, k.Spent, linux.DefaultBudget)
			}
		}
	}
}
