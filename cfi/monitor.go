package cfi

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// Alert kinds and severities.
const (
	// KindUnlearnedPage is kernel-mode execution on a code page (core or
	// module text) that is not in Model 1.
	KindUnlearnedPage = "unlearned-page"
	// KindUnknownCode is kernel-mode execution outside every known code
	// region (core text, a listed module's text): injected code.
	KindUnknownCode = "unknown-code"
	// KindUnlearnedEdge is a transition between two learned pages that is
	// not in Model 2 (only with MonitorOptions.Edges).
	KindUnlearnedEdge = "unlearned-edge"

	SeverityAlert    = "alert"
	SeverityCritical = "critical"
)

// Alert is one finding of the monitor.
type Alert struct {
	Kind     string `json:"kind"`
	Severity string `json:"severity"`
	Address  string `json:"address"` // hex, the executed address (page start when the source has no finer one)
	Page     string `json:"page,omitempty"`
	Symbol   string `json:"symbol,omitempty"`
	Offset   uint64 `json:"offset,omitempty"`
	Owner    string `json:"owner"`
	CPU      int    `json:"cpu"`
	Source   string `json:"source"`
	// Seen is when the source saw the execution; Reported when the
	// monitor decided (Reported - Seen is the monitor's own latency).
	Seen     time.Time `json:"seen"`
	Reported time.Time `json:"reported"`
	Evidence string    `json:"evidence"`
}

// MonitorOptions tune Monitor.
type MonitorOptions struct {
	// Edges also checks Model 2: a transition not in it between two pages
	// in Model 1 is an alert.
	Edges bool
	// MaxAlerts stops the run after that many alerts (default 10000).
	MaxAlerts int
	// Refresh re-reads the regions on a page outside them (a module
	// loaded after the monitor started).
	Refresh RegionsFunc
	// Trampoline, when set, names the code region the kernel made on its
	// own that holds va (an ftrace or BPF trampoline, a kprobe slot), ""
	// when none: execution there is an alert, not a critical one.
	Trampoline func(va vmi.VA) string
}

// MonitorStats count what a monitoring run saw.
type MonitorStats struct {
	Events int64
	Alerts int
	ByKind map[string]int
}

// Monitor runs src until ctx ends and calls alert for each page (and,
// with Edges, each transition) outside the model, once per page or edge.
// The model must be of the running kernel's build (a *BuildMismatchError
// otherwise, before anything runs).
func Monitor(ctx context.Context, src Source, m *Model, regions *Regions, opts MonitorOptions, alert func(Alert) error) (MonitorStats, error) {
	st := MonitorStats{ByKind: map[string]int{}}
	if err := m.Build.Check(regions.Build); err != nil {
		return st, err
	}
	if opts.MaxAlerts <= 0 {
		opts.MaxAlerts = 10000
	}
	cache := &regionsCache{cur: regions, refresh: opts.Refresh, last: time.Now()}
	seenPage := map[vmi.VA]bool{}
	seenEdge := map[Edge]bool{}
	var mu sync.Mutex
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	raise := func(a Alert) error {
		st.Alerts++
		st.ByKind[a.Kind]++
		a.Reported = time.Now()
		a.Source = src.Name()
		if err := alert(a); err != nil {
			return err
		}
		if st.Alerts >= opts.MaxAlerts {
			stop()
		}
		return nil
	}
	err := src.Run(ctx, func(ev Event) error {
		mu.Lock()
		defer mu.Unlock()
		st.Events++
		if ev.Replay {
			return nil
		}
		p, reg, ok := cache.pageOf(ctx, ev.Page)
		if !seenPage[ev.Page] {
			seenPage[ev.Page] = true
			if !ok {
				if mod := reg.InitText(ev.Addr); mod != "" {
					return raise(Alert{Kind: KindUnlearnedPage, Severity: SeverityAlert, Address: hexVA(ev.Addr), Owner: "module " + mod + " (init text)", CPU: ev.CPU, Seen: ev.Time,
						Evidence: fmt.Sprintf("kernel-mode execution at %#x in the init text of module %s, which no model holds (freed after init)%s", uint64(ev.Addr), mod, fromText(reg, ev.From))})
				}
				if opts.Trampoline != nil {
					if what := opts.Trampoline(ev.Addr); what != "" {
						return raise(Alert{Kind: KindUnlearnedPage, Severity: SeverityAlert, Address: hexVA(ev.Addr), Owner: what, CPU: ev.CPU, Seen: ev.Time,
							Evidence: fmt.Sprintf("kernel-mode execution at %#x in %s, which no model holds%s", uint64(ev.Addr), what, fromText(reg, ev.From))})
					}
				}
				return raise(Alert{Kind: KindUnknownCode, Severity: SeverityCritical, Address: hexVA(ev.Addr), Owner: ownerNone, CPU: ev.CPU, Seen: ev.Time,
					Evidence: fmt.Sprintf("kernel-mode execution at %#x, outside core text [%#x,%#x) and every listed module's text%s", uint64(ev.Addr), uint64(reg.Text), uint64(reg.Etext), fromText(reg, ev.From))})
			}
			if !m.HasPage(p) {
				name, off, owner := reg.Symbolize(ev.Addr)
				return raise(Alert{Kind: KindUnlearnedPage, Severity: SeverityAlert, Address: hexVA(ev.Addr), Page: p.String(), Symbol: name, Offset: off, Owner: owner, CPU: ev.CPU, Seen: ev.Time,
					Evidence: fmt.Sprintf("page %v executed in kernel mode; not among the model's %d learned pages%s", p, len(m.Pages), fromText(reg, ev.From))})
			}
		}
		if !opts.Edges || !ok || ev.From == 0 {
			return nil
		}
		from, _, fok := cache.pageOf(ctx, ev.From)
		e := Edge{From: from, To: p}
		if !fok || from == p || !m.HasPage(from) || !m.HasPage(p) || m.HasEdge(e) || seenEdge[e] {
			return nil
		}
		seenEdge[e] = true
		name, off, owner := reg.Symbolize(ev.Addr)
		return raise(Alert{Kind: KindUnlearnedEdge, Severity: SeverityAlert, Address: hexVA(ev.Addr), Page: p.String(), Symbol: name, Offset: off, Owner: owner, CPU: ev.CPU, Seen: ev.Time,
			Evidence: fmt.Sprintf("transition %v not among the model's %d learned edges", e, len(m.Edges))})
	})
	return st, err
}

func hexVA(va vmi.VA) string { return fmt.Sprintf("%#x", uint64(va)) }

// fromText says which page ran before, when the source knows it.
func fromText(r *Regions, from vmi.VA) string {
	if from == 0 {
		return ""
	}
	if p, ok := r.PageOf(from); ok {
		name, off, _ := r.Symbolize(from)
		if name != "" {
			return fmt.Sprintf(", entered from page %v (%s+%#x)", p, name, off)
		}
		return fmt.Sprintf(", entered from page %v", p)
	}
	return fmt.Sprintf(", entered from %#x", uint64(from))
}
