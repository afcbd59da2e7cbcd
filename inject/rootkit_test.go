package inject

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/inject/injecttest"
)

// TestRootkitFtraceHidesFile boots the fixture with testdata/rootkit's
// ftrace mode (an IPMODIFY ftrace_ops on __x64_sys_getdents64 that hides
// names starting with vmscope_hidden): protect before and full refuse
// the listing with the hook as the reason; the stepped call alone aborts
// on the hook's trampoline; protect off returns the kernel's lie, and
// the cross-view with the disk image reports the hidden file.
func TestRootkitFtraceHidesFile(t *testing.T) {
	l := injecttest.Boot(t, "vmscope.rootkit=ftrace")
	if sec := l.Section("rootkit"); len(sec) != 2 || sec[0] != "scenario=ftrace" || sec[1] != "hidden=yes" {
		t.Fatalf("the rootkit did not hide the file: %q", sec)
	}
	disk := diskView(t, l.Image)
	g, k := attach(t, l.Spec, filepath.Join(t.TempDir(), "guest.json"))
	lv := &live{g: g, k: k}
	defer g.Close(t.Context())
	if err := g.Resume(t.Context()); err != nil {
		t.Fatal(err)
	}
	op := Op{Kind: "ls", Path: "/mnt/data"}

	for _, p := range []Protect{ProtectBefore, ProtectFull} {
		res, err := lv.runOn(t, op, Options{Protect: p, Disk: disk})
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "ftrace-hook") {
			t.Errorf("protect %v: %v, want a refusal naming the ftrace hook", p, err)
		}
		if res.Dummy != nil || len(res.Calls) != 0 {
			t.Errorf("protect %v: a refused operation borrowed a dummy: %+v", p, res)
		}
	}

	res, err := lv.runOn(t, op, Options{Protect: ProtectFull, Disk: disk, noBefore: true})
	if !errors.Is(err, ErrAborted) || !res.Restored {
		t.Errorf("stepped ls under the hook: %v (restored %v), want an abort", err, res.Restored)
	} else if v := verdict(res, "during"); v.Status != "fail" || !strings.Contains(strings.Join(v.Reasons, " "), "getdents64") {
		t.Errorf("during verdict %+v", v)
	}
	t.Logf("during: %v", err)
	// the restoring calls (the descriptor left open, the mapping) were
	// stepped too, and passed
	restoring := map[string]int{}
	for _, c := range res.Calls {
		if c.Name == "close" || c.Name == "munmap" {
			restoring[c.Name] = c.Steps
		}
	}
	if restoring["close"] < 100 || restoring["munmap"] < 100 {
		t.Errorf("restoring calls after the abort: %+v", res.Calls)
	}

	primeHidden(t, l)
	res, err = lv.runOn(t, op, Options{Protect: ProtectOff, Disk: disk})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range res.Entries {
		if e.Name == "vmscope_hidden_data" {
			t.Fatal("the kernel listed the hidden file: the rootkit is not active")
		}
	}
	afterRootkit(t, lv, op, res)
	if err := l.DummyOK(2, 30e9); err != nil {
		t.Error(err)
	}
}
