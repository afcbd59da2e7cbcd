package cfi_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/linux"
)

// rootkitPath is a file of the rootkit fixture (testdata/rootkit/build.sh),
// or skips the test (fails it under CI).
func rootkitPath(t testing.TB, elems ...string) string {
	t.Helper()
	p := filepath.Join(append([]string{fixture.Root(), "testdata", "out-rootkit"}, elems...)...)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (run bash testdata/rootkit/build.sh)", p)
	}
	return p
}

func TestCheckRootkit(t *testing.T) {
	for _, sc := range []string{"clean", "sct", "ftrace", "hide", "code"} {
		t.Run(sc, func(t *testing.T) {
			truth := loadConsole(t, rootkitPath(t, sc, "console.log"))
			kv, addr := truth.rootkit(t)
			t.Logf("truth %v", kv)
			s, k := openKernel(t, rootkitPath(t, sc, "guest.elf"))
			img, err := linux.ReadVmlinux(fixture.GuestPath(t, "vmlinuz"))
			if err != nil {
				t.Fatal(err)
			}
			rep, err := cfi.Check(context.Background(), k, cfi.WithCPUs(s.CPUs()), cfi.WithKernelImage(img))
			if err != nil {
				t.Fatal(err)
			}
			mod := "module vmscope_rootkit"
			var want []cfi.Finding
			switch sc {
			case "sct":
				want = []cfi.Finding{{Kind: cfi.KindSyscallHook, Address: addr["new"], Symbol: "rk_sct_getdents64", Owner: mod, Where: "sys_call_table[" + kv["nr"] + "]"}}
			case "ftrace":
				want = []cfi.Finding{
					{Kind: cfi.KindFtraceHook, Address: addr["target"], Symbol: "__x64_sys_getdents64", Owner: cfi.OwnerKernel, Where: "ftrace record"},
					{Kind: cfi.KindFtraceHook, Address: addr["func"], Symbol: "rk_ftrace_thunk", Owner: mod, Where: fmt.Sprintf("ftrace_ops %#x", addr["ops"])},
				}
			case "hide":
				want = []cfi.Finding{
					{Kind: cfi.KindExecPage, Address: addr["base"], Owner: cfi.OwnerNone},
					{Kind: cfi.KindHiddenModule, Address: addr["module"], Owner: cfi.OwnerNone, Where: "struct module vmscope_rootkit"},
				}
			case "code":
				want = []cfi.Finding{{Kind: cfi.KindExecPage, Address: addr["code"], Owner: cfi.OwnerNone}}
			}
			cfi.SortFindings(want)
			if len(rep.Findings) != len(want) {
				t.Errorf("%d findings, want %d", len(rep.Findings), len(want))
			}
			for i, f := range rep.Findings {
				t.Logf("finding: %v", f)
				if i >= len(want) {
					t.Errorf("extra finding %v", f)
					continue
				}
				w := want[i]
				if sc == "hide" && f.Kind == cfi.KindExecPage && !strings.Contains(f.Evidence, `core text of module "vmscope_rootkit"`) {
					t.Errorf("the hidden module's page is not attributed to its carved struct module: %s", f.Evidence)
				}
				if f.Kind != w.Kind || f.Address != w.Address || f.Symbol != w.Symbol || f.Owner != w.Owner || f.Where != w.Where || f.Offset != 0 || f.Evidence == "" {
					t.Errorf("finding %v\nwant %+v", f, w)
				}
			}
			for _, st := range rep.Checks {
				if st.Skipped != "" {
					t.Errorf("check %s skipped: %s", st.Name, st.Skipped)
				}
			}
			for _, p := range rep.Problems {
				t.Errorf("problem: %v", p)
			}
		})
	}
}
