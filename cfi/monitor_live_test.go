package cfi

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi"
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
	_, _, _ = cfiFixture(t)
	rkMarker := filepath.Join(fixture.Root(), "testdata", "out-cfi-plugin", "rootkit")
	if _, err := os.Stat(rkMarker); err != nil {
		fixture.Missing(t, "the cfi workload initramfs without the rootkit module (build testdata/rootkit, then testdata/cfi-plugin)")
	}
	// Boot 1: learn.
	g1 := bootGuest(t, "")
	qg1, _, r1 := attach(t, g1)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
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
	g1.quit()
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

	type got struct {
		a  Alert
		at time.Time
	}
	var mu sync.Mutex
	var alerts []got
	critical := make(chan Alert, 16)
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
	mst, err := Monitor(mctx, &PluginSource{Socket: g2.Plugin}, model, r2, MonitorOptions{Refresh: func(ctx context.Context) (*Regions, error) {
		return r2.ReloadModules(ctx, k2)
	}}, func(a Alert) error {
		mu.Lock()
		alerts = append(alerts, got{a, time.Now()})
		mu.Unlock()
		if a.Severity == SeverityCritical {
			select {
			case critical <- a:
			default:
			}
			mcancel()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
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
