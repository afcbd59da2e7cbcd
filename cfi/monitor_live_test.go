package cfi

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// learnSeconds and cleanSeconds are how long the cross-boot test learns
// and monitors the clean workload (bench/cfi.sh measures longer runs).
const (
	learnSeconds = 20
	cleanSeconds = 25
)

var (
	insmodRE = regexp.MustCompile(`=== INSMOD ([0-9.]+) ===`)
	codeRE   = regexp.MustCompile(`=== ROOTKIT mode=code code=([0-9a-f]{16}) `)
)

// TestModelAcrossBootsAndInjectedCode learns Model 1 and 2 with the plugin
// on one boot and monitors another boot, with another KASLR slide, with
// the same model: the model applies (same build; each learned core page
// holds the same symbols at the same offsets on both boots), the clean
// workload raises no critical alert and no alert on a learned page (the
// count of alerts on pages it had not learned is the measured false
// positive rate), and once the rootkit fixture's `code` scenario copies a
// function to a fresh executable allocation and runs it from a timer, the
// monitor raises a critical unknown-code alert on exactly that page within
// 1 s of the code's first execution (the plugin's timestamp; the time from
// the module's load starting is logged). A model of another build is
// refused.
func TestModelAcrossBootsAndInjectedCode(t *testing.T) {
	model, r1 := learnedModel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// Boot 2: the rootkit loads 40 s after READY.
	g2 := bootGuest(t, "cfi.rootkit=code cfi.rootkit_after=40")
	qg2, k2, r2 := attach(t, g2)
	defer qg2.Close(context.Background())
	if r2.Slide == r1.Slide {
		t.Fatalf("both boots have the KASLR slide %#x", r1.Slide)
	}
	if err := model.Build.Check(r2.Build); err != nil {
		t.Fatal(err)
	}
	for _, p := range model.Pages {
		if p.Module != "" {
			continue
		}
		v1, _ := r1.VA(p)
		v2, ok := r2.VA(p)
		n1, o1, _ := r1.Symbolize(v1)
		n2, o2, _ := r2.Symbolize(v2)
		if !ok || n1 != n2 || o1 != o2 {
			t.Errorf("page %v: %s+%#x on boot 1, %s+%#x on boot 2", p, n1, o1, n2, o2)
		}
	}
	other := *model
	other.Build.Banner += " (another build)"
	if _, err := Monitor(ctx, &PluginSource{Socket: g2.Plugin}, &other, r2, MonitorOptions{}, func(Alert) error { return nil }); !errors.Is(err, ErrBuildMismatch) {
		t.Errorf("model of another build: %v", err)
	}

	mctx, mcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer mcancel()
	insmodAt := make(chan time.Time, 1)
	go func() { // the host time the INSMOD line reaches the console (1 s before the load)
		for mctx.Err() == nil {
			if b, _ := os.ReadFile(g2.Console); insmodRE.Match(b) {
				insmodAt <- time.Now()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	start := time.Now()
	alerts, mst := monitorBoot(mctx, t, g2, model, r2, MonitorOptions{Refresh: func(ctx context.Context) (*Regions, error) {
		return r2.ReloadModules(ctx, k2)
	}}, func(a Alert) bool { return a.Severity == SeverityCritical })
	var injected time.Time
	select {
	case injected = <-insmodAt:
	default:
		t.Fatal("the rootkit was not loaded while the monitor ran")
	}
	// The module's report follows insmod's return, maybe after the alert.
	var b []byte
	var m [][]byte
	for i := 0; i < 300 && m == nil; i++ {
		b, _ = os.ReadFile(g2.Console)
		if m = codeRE.FindSubmatch(b); m == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if m == nil {
		t.Fatalf("no code address on the console: %s", b[max(0, len(b)-2000):])
	}
	code, _ := strconv.ParseUint(string(m[1]), 16, 64)

	clean, found := 0, false
	for _, x := range alerts {
		a := x.a
		addr, _ := strconv.ParseUint(a.Address[2:], 16, 64)
		if x.at.Before(injected) {
			// the clean part of the run
			clean++
			if a.Severity == SeverityCritical {
				t.Errorf("critical alert on the clean workload: %+v", a)
			}
			if p, err := ParsePage(a.Page); err == nil && model.HasPage(p) {
				t.Errorf("alert on a learned page: %+v", a)
			}
			t.Logf("clean-run alert: %s %s %s+%#x (%s)", a.Kind, a.Address, a.Symbol, a.Offset, a.Owner)
			continue
		}
		t.Logf("after insmod: %s %s %s %s+%#x (%s) %s", a.Severity, a.Kind, a.Address, a.Symbol, a.Offset, a.Owner, a.Evidence)
		if a.Severity == SeverityCritical && pageOf(vmi.VA(addr)) == pageOf(vmi.VA(code)) {
			found = true
			lat := x.at.Sub(a.Seen)
			t.Logf("injected code page %#x: critical alert %v after it first ran, %v after the INSMOD line (printed 1 s before the load; the plugin saw it run %v after that line)",
				code, lat, x.at.Sub(injected), a.Seen.Sub(injected))
			if lat > time.Second || lat < 0 {
				t.Errorf("detection took %v from the code's first execution, more than 1 s", lat)
			}
		}
	}
	if !found {
		t.Errorf("no critical alert on the injected code page %#x", code)
	}
	cleanFor := injected.Sub(start)
	t.Logf("clean workload: %d alerts in %v of monitoring after %ds of learning on another boot (%.0f/hour); %d events",
		clean, cleanFor.Round(time.Second), learnSeconds, float64(clean)/cleanFor.Hours(), mst.Events)
	g2.running(t)
}

// learned is the model learned once per test binary: the tests that
// monitor other boots share it.
var learned struct {
	sync.Mutex
	model   *Model
	regions *Regions
}

// learnedModel learns Model 1 and 2 with the plugin for learnSeconds on
// the shared plain boot (plainGuest: the clean workload, no rootkit),
// checks that the model survives its file format and is not trivially
// small, and returns it with that boot's regions.
func learnedModel(t *testing.T) (*Model, *Regions) {
	t.Helper()
	_, _, _ = cfiFixture(t)
	rkMarker := filepath.Join(fixture.Root(), "testdata", "out-cfi-plugin", "rootkit")
	if _, err := os.Stat(rkMarker); err != nil {
		fixture.Missing(t, "the cfi workload initramfs without the rootkit module (build testdata/rootkit, then testdata/cfi-plugin)")
	}
	learned.Lock()
	defer learned.Unlock()
	if learned.model != nil {
		return learned.model, learned.regions
	}
	g1 := plainGuest(t) // the shared plain boot
	qg1, _, r1 := attach(t, g1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lctx, lcancel := context.WithTimeout(ctx, learnSeconds*time.Second)
	model, lst, err := Learn(lctx, &PluginSource{Socket: g1.Plugin}, r1, nil)
	lcancel()
	if err != nil {
		t.Fatal(err)
	}
	if err := qg1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	enc, err := model.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if model, err = ParseModel(bytes.NewReader(enc)); err != nil {
		t.Fatal(err)
	}
	t.Logf("learned %ds: %d pages, %d edges, coverage %.1f%%, %+v", learnSeconds, len(model.Pages), len(model.Edges), 100*model.Coverage(), lst)
	if len(model.Pages) < 200 || len(model.Edges) < len(model.Pages) {
		t.Fatalf("model too small: %d pages, %d edges", len(model.Pages), len(model.Edges))
	}
	learned.model, learned.regions = model, r1
	return model, r1
}

// timedAlert is an alert and the host time the test got it.
type timedAlert struct {
	a  Alert
	at time.Time
}

// monitorBoot runs Monitor with g's plugin against model until ctx ends or
// stop returns true for an alert, and returns every alert with the time it
// came.
func monitorBoot(ctx context.Context, t *testing.T, g *testGuest, model *Model, r *Regions, opts MonitorOptions, stop func(Alert) bool) ([]timedAlert, MonitorStats) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var alerts []timedAlert
	st, err := Monitor(ctx, &PluginSource{Socket: g.Plugin}, model, r, opts, func(a Alert) error {
		mu.Lock()
		alerts = append(alerts, timedAlert{a, time.Now()})
		mu.Unlock()
		if stop(a) {
			cancel()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return alerts, st
}

var rootkitRE = regexp.MustCompile(`=== ROOTKIT (mode=\S+ [^\n]*) ===`)

// scenarioBoot boots the workload guest with the rootkit loaded in mode
// 2 s after READY, waits for the module's report on the console and
// returns it as KEY=VALUE pairs (the ground truth), with the guest
// attached and its regions read after the load.
func scenarioBoot(t *testing.T, mode string) (*testGuest, *linux.Kernel, *Regions, map[string]string) {
	t.Helper()
	g := bootGuest(t, "cfi.rootkit="+mode+" cfi.rootkit_after=2")
	qg, k, r := attach(t, g)
	t.Cleanup(func() { qg.Close(context.Background()) })
	var b []byte
	var m [][]byte
	for i := 0; i < 1200 && m == nil; i++ {
		b, _ = os.ReadFile(g.Console)
		if m = rootkitRE.FindSubmatch(b); m == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if m == nil {
		t.Fatalf("no rootkit report on the console: %s", b[max(0, len(b)-2000):])
	}
	t.Logf("rootkit: %s", m[1])
	truth := map[string]string{}
	for _, f := range strings.Fields(string(m[1])) {
		if k, v, ok := strings.Cut(f, "="); ok {
			truth[k] = v
		}
	}
	if truth["mode"] != mode {
		t.Fatalf("rootkit report %q: want mode=%s", m[1], mode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := r.ReloadModules(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	return g, k, r, truth
}

// truthVA is the address KEY of the rootkit's report.
func truthVA(t *testing.T, truth map[string]string, key string) vmi.VA {
	t.Helper()
	v, err := strconv.ParseUint(truth[key], 16, 64)
	if err != nil || v == 0 {
		t.Fatalf("rootkit report: %s=%q", key, truth[key])
	}
	return vmi.VA(v)
}

// TestModelRootkitFtraceAndHide monitors, with the model of the cross-boot
// test (learned on a clean boot), one boot per rootkit scenario that runs
// code the model lacks; the monitor starts once the module has reported
// (as on a guest compromised before monitoring):
//   - ftrace: the workload's getdents64 runs the hook's ftrace callback and
//     replacement function (module text, listed): an alert on each of their
//     pages (the console's func= and replacement=) naming module
//     vmscope_rootkit, and no critical alert (the ops' trampoline is known
//     from the KernelMap, as `cfi monitor` does);
//   - hide: the module unlinked itself from the module list and sysfs and
//     keeps a timer running its text (timer_fn=): that text is outside
//     every known region once re-read, and the monitor raises a critical
//     unknown-code alert on the timer's page.
func TestModelRootkitFtraceAndHide(t *testing.T) {
	model, _ := learnedModel(t)
	const owner = "module vmscope_rootkit"
	t.Run("ftrace", func(t *testing.T) {
		g, k, r, truth := scenarioBoot(t, "ftrace")
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		km, err := NewKernelMap(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		tramp := func(va vmi.VA) string {
			reg, ok := km.Region(va)
			if !ok || reg.Kind == RegionCore || reg.Kind == RegionModule {
				return ""
			}
			return reg.Kind + " " + reg.Name
		}
		want := map[vmi.VA]string{}
		for _, key := range []string{"func", "replacement"} {
			va := truthVA(t, truth, key)
			if _, _, o := r.Symbolize(va); o != owner {
				t.Fatalf("%s=%#x: owner %q, want %q", key, uint64(va), o, owner)
			}
			want[pageOf(va)] = key
		}
		missing := len(want)
		alerts, st := monitorBoot(ctx, t, g, model, r, MonitorOptions{Trampoline: tramp, Refresh: func(ctx context.Context) (*Regions, error) {
			return r.ReloadModules(ctx, k)
		}}, func(a Alert) bool {
			if addr, err := strconv.ParseUint(a.Address, 0, 64); err == nil && want[pageOf(vmi.VA(addr))] != "" && a.Owner == owner {
				missing--
			}
			return missing == 0
		})
		for _, x := range alerts {
			a := x.a
			t.Logf("%s %s %s %s+%#x (%s) %s", a.Severity, a.Kind, a.Address, a.Symbol, a.Offset, a.Owner, a.Evidence)
			if a.Severity == SeverityCritical {
				t.Errorf("critical alert: %+v", a)
			}
			addr, _ := strconv.ParseUint(a.Address, 0, 64)
			if key := want[pageOf(vmi.VA(addr))]; key != "" {
				if a.Owner != owner || a.Kind != KindUnlearnedPage || a.Severity != SeverityAlert {
					t.Errorf("alert on the page of %s: %+v, want an %s %s alert owned by %s", key, a, SeverityAlert, KindUnlearnedPage, owner)
				}
				delete(want, pageOf(vmi.VA(addr)))
			}
		}
		for p, key := range want {
			t.Errorf("no alert on page %#x of the hook's %s (%d alerts, %d events)", uint64(p), key, len(alerts), st.Events)
		}
	})
	t.Run("hide", func(t *testing.T) {
		g, k, r, truth := scenarioBoot(t, "hide")
		timer, base := truthVA(t, truth, "timer_fn"), truthVA(t, truth, "base")
		for _, va := range []vmi.VA{timer, base} {
			if r.Known(va) {
				t.Errorf("hidden module's text %#x is in a known region after it unlinked itself", uint64(va))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		hit := func(a Alert) bool {
			addr, err := strconv.ParseUint(a.Address, 0, 64)
			return err == nil && pageOf(vmi.VA(addr)) == pageOf(timer)
		}
		alerts, st := monitorBoot(ctx, t, g, model, r, MonitorOptions{Refresh: func(ctx context.Context) (*Regions, error) {
			return r.ReloadModules(ctx, k)
		}}, hit)
		found := false
		for _, x := range alerts {
			a := x.a
			t.Logf("%s %s %s %s+%#x (%s) %s", a.Severity, a.Kind, a.Address, a.Symbol, a.Offset, a.Owner, a.Evidence)
			switch {
			case hit(a) && a.Severity == SeverityCritical && a.Kind == KindUnknownCode:
				found = true
			case hit(a):
				t.Errorf("alert on the hidden timer's page: %+v, want a critical %s", a, KindUnknownCode)
			case a.Severity == SeverityCritical:
				t.Errorf("critical alert off the hidden timer's page %#x: %+v", uint64(timer), a)
			}
		}
		if !found {
			t.Errorf("no critical alert on the hidden module's timer page %#x (%d alerts, %d events)", uint64(timer), len(alerts), st.Events)
		}
	})
}
