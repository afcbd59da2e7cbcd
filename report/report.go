// Package report renders vmscope's NDJSON outputs (scan findings, diff
// and dirty changes, timeline events) as one self-contained HTML page a
// person opens in a browser.
//
// Promises:
//   - Self-contained: no network access, no external script, style sheet,
//     font or image; the input data is embedded in the page (a JSON script
//     element) and everything is drawn from it.
//   - The timeline plot is inline SVG drawn here (one circle per file event,
//     one line per finding time) with a few lines of inline JavaScript for
//     zoom (wheel) and reset (double click): no charting library, so the page
//     stays small and has nothing to fetch or vendor.
//   - Deterministic: the same inputs give the same bytes (everything is
//     sorted; no clock, no random identifiers).
//   - Guest strings are escaped (html/template), never markup.
package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Finding is one scan finding, as scan --format ndjson writes it.
type Finding struct {
	Image     string         `json:"image"`
	Partition string         `json:"partition"`
	FS        string         `json:"filesystem"`
	Path      string         `json:"path"`
	Inode     uint64         `json:"inode"`
	Size      int64          `json:"size"`
	SHA256    string         `json:"sha256"`
	Rule      string         `json:"rule"`
	Namespace string         `json:"namespace"`
	Meta      map[string]any `json:"meta"`
	Strings   []struct {
		ID     string `json:"id"`
		Offset int64  `json:"offset"`
		Length int    `json:"length"`
	} `json:"strings"`
}

// Severity is the finding's severity meta, lower case, "unknown" when
// absent.
func (f *Finding) Severity() string {
	if s, ok := f.Meta["severity"].(string); ok && s != "" {
		return strings.ToLower(s)
	}
	return "unknown"
}

// Change is one changed file of a diff or dirty poll (--format ndjson).
type Change struct {
	Volume  string   `json:"volume"`
	Path    string   `json:"path"`
	Inode   uint64   `json:"inode"`
	Type    string   `json:"type"`
	Change  string   `json:"change"`
	Reasons []string `json:"reasons"`
	Fields  []string `json:"fields"`
	Size    int64    `json:"size"`
}

// Event is one timeline event (timeline --format ndjson).
type Event struct {
	Time   time.Time `json:"time"`
	MACB   string    `json:"macb"`
	Volume string    `json:"volume"`
	Path   string    `json:"path"`
	Inode  uint64    `json:"inode"`
	Size   int64     `json:"size"`
	Source string    `json:"source,omitempty"`
}

// Layer is one file of an image's backing chain, as the summary line of
// scan --format ndjson lists it (top first).
type Layer struct {
	Path          string `json:"path"`
	Format        string `json:"format"`
	VirtualSize   int64  `json:"virtual_size"`
	Backing       string `json:"backing,omitempty"`
	BackingFormat string `json:"backing_format,omitempty"`
}

// Chain is the backing chain of one scanned image.
type Chain struct {
	Image  string  `json:"image"`
	Layers []Layer `json:"layers"`
}

// Input is everything a report shows.
type Input struct {
	Images   []string
	Chains   []Chain
	Findings []Finding
	Summary  map[string]any
	Changes  []Change
	Events   []Event
}

// maxLine caps one NDJSON line.
const maxLine = 16 << 20

// Read adds the lines of one NDJSON file to in, each by its shape: a scan
// line has "type" (finding, summary; errors and the rest are not shown),
// a change has "change", a timeline event "macb". Other lines are an
// error naming the line.
func (in *Input) Read(r io.Reader, name string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var probe struct {
			Type   *string `json:"type"`
			Change *string `json:"change"`
			MACB   *string `json:"macb"`
			Image  string  `json:"image"`
		}
		if err := json.Unmarshal(line, &probe); err != nil {
			return fmt.Errorf("%s:%d: %w", name, n, err)
		}
		var err error
		switch {
		case probe.MACB != nil:
			var e Event
			err = json.Unmarshal(line, &e)
			in.Events = append(in.Events, e)
		case probe.Change != nil:
			var c Change
			err = json.Unmarshal(line, &c)
			in.Changes = append(in.Changes, c)
		case probe.Type != nil && *probe.Type == "finding":
			var f Finding
			err = json.Unmarshal(line, &f)
			in.Findings = append(in.Findings, f)
		case probe.Type != nil && *probe.Type == "summary":
			var c struct {
				Chain []Layer `json:"chain"`
			}
			if err = json.Unmarshal(line, &in.Summary); err == nil {
				err = json.Unmarshal(line, &c)
			}
			if err == nil && len(c.Chain) > 0 {
				in.addChain(Chain{Image: probe.Image, Layers: c.Chain})
			}
		case probe.Type != nil:
			// errors, skipped files, module prefixes: counted in the summary
		default:
			return fmt.Errorf("%s:%d: not a scan, diff, dirty or timeline line", name, n)
		}
		if err != nil {
			return fmt.Errorf("%s:%d: %w", name, n, err)
		}
		if probe.Image != "" {
			in.addImage(probe.Image)
		}
	}
	return sc.Err()
}

// addChain keeps the chain of an image, once (the first summary line of
// the image gives it).
func (in *Input) addChain(c Chain) {
	for _, x := range in.Chains {
		if x.Image == c.Image {
			return
		}
	}
	in.Chains = append(in.Chains, c)
}

func (in *Input) addImage(p string) {
	for _, x := range in.Images {
		if x == p {
			return
		}
	}
	in.Images = append(in.Images, p)
}

var severityOrder = map[string]int{"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4, "unknown": 5}

func sevRank(s string) int {
	if r, ok := severityOrder[s]; ok {
		return r
	}
	return 4
}

// sortAll puts every list in its shown, deterministic order.
func (in *Input) sortAll() {
	sort.Strings(in.Images)
	sort.SliceStable(in.Chains, func(i, j int) bool { return in.Chains[i].Image < in.Chains[j].Image })
	sort.SliceStable(in.Findings, func(i, j int) bool {
		a, b := &in.Findings[i], &in.Findings[j]
		if ra, rb := sevRank(a.Severity()), sevRank(b.Severity()); ra != rb {
			return ra < rb
		}
		if a.Partition+a.Path != b.Partition+b.Path {
			return a.Partition+a.Path < b.Partition+b.Path
		}
		return a.Rule < b.Rule
	})
	sort.SliceStable(in.Changes, func(i, j int) bool {
		a, b := &in.Changes[i], &in.Changes[j]
		if a.Volume+a.Path != b.Volume+b.Path {
			return a.Volume+a.Path < b.Volume+b.Path
		}
		return a.Change < b.Change
	})
	sort.SliceStable(in.Events, func(i, j int) bool {
		a, b := &in.Events[i], &in.Events[j]
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		if a.Volume+a.Path != b.Volume+b.Path {
			return a.Volume+a.Path < b.Volume+b.Path
		}
		return a.MACB < b.MACB
	})
}
