package cfi

import (
	"fmt"
	"io"
)

// ModelSummary is what `cfi show` prints of a model.
type ModelSummary struct {
	Banner      string         `json:"banner"`
	TextPages   uint32         `json:"text_pages"`
	Layout      string         `json:"layout_sha256"`
	Source      string         `json:"source"`
	LearnedMS   int64          `json:"learned_ms"`
	Pages       int            `json:"pages"`
	CorePages   int            `json:"core_pages"`
	ModulePages map[string]int `json:"module_pages"`
	Edges       int            `json:"edges"`
	Coverage    float64        `json:"coverage"` // core pages / text pages
}

// Summary counts a model's pages and edges.
func (m *Model) Summary() ModelSummary {
	s := ModelSummary{Banner: m.Build.Banner, TextPages: m.Build.TextPages, Layout: m.Build.Layout, Source: m.Source,
		LearnedMS: m.LearnedMS, Pages: len(m.Pages), Edges: len(m.Edges), Coverage: m.Coverage(), ModulePages: map[string]int{}}
	for _, p := range m.Pages {
		if p.Module == "" {
			s.CorePages++
		} else {
			s.ModulePages[p.Module]++
		}
	}
	return s
}

// WriteText prints the summary for a terminal (guest strings escaped by
// the caller's printable).
func (s ModelSummary) WriteText(w io.Writer, printable func(string) string) error {
	_, err := fmt.Fprintf(w, "build: %s\ntext pages: %d\nlayout: %s\nsource: %s, learned %.1fs\npages: %d (core %d, modules %d)\nedges: %d\ncoverage: %.2f%% of core text pages\n",
		printable(s.Banner), s.TextPages, s.Layout, printable(s.Source), float64(s.LearnedMS)/1000, s.Pages, s.CorePages, s.Pages-s.CorePages, s.Edges, 100*s.Coverage)
	if err != nil {
		return err
	}
	for _, name := range sortedKeys(s.ModulePages) {
		if _, err := fmt.Fprintf(w, "  module %s: %d pages\n", printable(name), s.ModulePages[name]); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
