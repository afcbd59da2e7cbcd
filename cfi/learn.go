package cfi

import (
	"context"
	"sync"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// RegionsFunc re-reads the kernel's regions (a module loaded since they
// were read). Learn and Monitor call it, at most every RefreshEvery, when
// a source reports a page outside the regions they hold.
type RegionsFunc func(ctx context.Context) (*Regions, error)

// RefreshEvery bounds how often the regions are re-read for a miss on a
// page already missed; a page never missed before re-reads them at once
// (a module just loaded runs its code right away), at most maxRefreshes
// times in all.
const (
	RefreshEvery = 2 * time.Second
	maxRefreshes = 1000
)

// regionsCache holds the current regions and refreshes them on a miss.
type regionsCache struct {
	mu      sync.Mutex
	cur     *Regions
	refresh RegionsFunc
	last    time.Time
	missed  map[vmi.VA]bool
	n       int
}

// pageOf resolves va, re-reading the regions on a miss when allowed.
func (c *regionsCache) pageOf(ctx context.Context, va vmi.VA) (Page, *Regions, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.cur.PageOf(va); ok {
		return p, c.cur, true
	}
	pg := va &^ (PageSize - 1)
	if c.missed == nil {
		c.missed = map[vmi.VA]bool{}
	}
	fresh := !c.missed[pg]
	c.missed[pg] = true
	if c.refresh != nil && c.n < maxRefreshes && (fresh || time.Since(c.last) >= RefreshEvery) {
		c.last = time.Now()
		c.n++
		if r, err := c.refresh(ctx); err == nil && r.Build == c.cur.Build {
			c.cur = r
			if p, ok := r.PageOf(va); ok {
				return p, r, true
			}
		}
	}
	return Page{}, c.cur, false
}

// LearnStats count what a learning run saw.
type LearnStats struct {
	Events  int64 // events from the source
	Unknown int64 // kernel pages outside core and module text (not in the model)
	Pages   int
	Edges   int
	Dropped int // over the model's caps
}

// Learn runs src until ctx ends and returns the model of what it saw:
// every kernel code page that executed (Model 1) and the page transitions
// (Model 2: From→Page for plugin and step; for sample, caller page →
// callee page along the unwound stack). Pages outside core and module
// text cannot be named across boots and are only counted. refresh may be
// nil.
func Learn(ctx context.Context, src Source, regions *Regions, refresh RegionsFunc) (*Model, LearnStats, error) {
	start := time.Now()
	b := NewModelBuilder()
	cache := &regionsCache{cur: regions, refresh: refresh, last: start}
	var st LearnStats
	err := src.Run(ctx, func(ev Event) error {
		st.Events++
		to, _, ok := cache.pageOf(ctx, ev.Page)
		if !ok {
			st.Unknown++
			return nil
		}
		b.AddPage(to)
		if ev.From != 0 {
			if from, _, ok := cache.pageOf(ctx, ev.From); ok && from != to {
				b.AddEdge(Edge{From: from, To: to})
			}
		}
		callee := to
		for _, c := range ev.Callers {
			caller, _, ok := cache.pageOf(ctx, c)
			if !ok {
				break
			}
			if caller != callee {
				b.AddEdge(Edge{From: caller, To: callee})
			}
			callee = caller
		}
		return nil
	})
	m := b.Model(regions.Build, src.Name(), time.Since(start).Milliseconds())
	st.Pages, st.Edges, st.Dropped = len(m.Pages), len(m.Edges), b.Dropped
	return m, st, err
}
