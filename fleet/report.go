package fleet

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/vmscope/vmscope/scan"
)

// Report formats.
var ReportFormats = []string{"table", "json", "ndjson", "sarif"}

// ReportSummary counts a fleet's images by outcome.
type ReportSummary struct {
	Images   int `json:"images"`
	Clean    int `json:"clean"`
	Findings int `json:"findings"`
	Failed   int `json:"failed"`
	Skipped  int `json:"skipped"`
	// Missing are the inventory's ids with no result (given an inventory).
	Missing   []string       `json:"missing"`
	PerRule   map[string]int `json:"findings_per_rule"`
	BytesRead int64          `json:"bytes_read"`
}

// FleetReport is the sorted union of result lines with its summary.
type FleetReport struct {
	RunIDs  []string      `json:"run_ids"`
	Summary ReportSummary `json:"summary"`
	// Lines are every result line without its shard (where an image was
	// scanned is not part of the result), sorted by image id, then type
	// (findings, errors, skipped files, the image line), then content.
	Lines  []json.RawMessage `json:"-"`
	Images []ImageLine       `json:"images"`
}

// typeRank orders the lines of one image.
func typeRank(t string) int {
	switch t {
	case TypeFinding:
		return 0
	case TypeError:
		return 1
	case TypeSkippedFile:
		return 2
	case TypeImage:
		return 3
	}
	return 4
}

// ReadResults reads the result files of a run folder (every *.ndjson not
// starting with a dot) as one stream.
func ReadResults(dir string) ([]io.Reader, func(), error) {
	ms, err := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	if err != nil {
		return nil, nil, err
	}
	var rs []io.Reader
	var fs []*os.File
	closeAll := func() {
		for _, f := range fs {
			f.Close()
		}
	}
	for _, m := range ms {
		f, err := os.Open(m)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		fs = append(fs, f)
		rs = append(rs, f)
	}
	return rs, closeAll, nil
}

type sortLine struct {
	id   string
	rank int
	b    []byte
}

// NewReport sorts the result lines read from rs (any concatenation of
// result files) and sums them up; inv, when given, names the images with
// no result. When an image has several image lines (a skipped one and a
// scan's), the scan's wins.
func NewReport(rs []io.Reader, inv *Inventory) (*FleetReport, error) {
	var lines []sortLine
	images := map[string]ImageLine{}
	runs := map[string]bool{}
	for _, r := range rs {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for n := 1; sc.Scan(); n++ {
			b := bytes.TrimSpace(sc.Bytes())
			if len(b) == 0 {
				continue
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				return nil, fmt.Errorf("result line %d: %w", n, err)
			}
			var h Head
			if err := json.Unmarshal(b, &h); err != nil || h.ImageID == "" || h.Type == "" {
				return nil, fmt.Errorf("result line %d: no type or image_id", n)
			}
			runs[h.RunID] = true
			if h.Type == TypeImage {
				var il ImageLine
				if err := json.Unmarshal(b, &il); err != nil {
					return nil, fmt.Errorf("result line %d: %w", n, err)
				}
				if old, ok := images[h.ImageID]; ok && il.Status == StatusSkipped && old.Status != StatusSkipped {
					continue
				}
				images[h.ImageID] = il
				continue
			}
			delete(m, "shard")
			nb, err := json.Marshal(m)
			if err != nil {
				return nil, err
			}
			lines = append(lines, sortLine{h.ImageID, typeRank(h.Type), nb})
		}
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	rep := &FleetReport{Summary: ReportSummary{PerRule: map[string]int{}, Missing: []string{}}}
	for r := range runs {
		rep.RunIDs = append(rep.RunIDs, r)
	}
	sort.Strings(rep.RunIDs)
	ids := make([]string, 0, len(images))
	for id := range images {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		il := images[id]
		il.Shard = ""
		rep.Images = append(rep.Images, il)
		rep.Summary.Images++
		switch il.Status {
		case StatusClean:
			rep.Summary.Clean++
		case StatusFindings:
			rep.Summary.Findings++
		case StatusFailed:
			rep.Summary.Failed++
		case StatusSkipped:
			rep.Summary.Skipped++
		}
		rep.Summary.BytesRead += il.BytesRead
		b, err := json.Marshal(il)
		if err != nil {
			return nil, err
		}
		var m map[string]json.RawMessage
		json.Unmarshal(b, &m)
		delete(m, "shard")
		nb, _ := json.Marshal(m)
		lines = append(lines, sortLine{id, typeRank(TypeImage), nb})
	}
	// Lines of an image without an image line (a truncated
	// concatenation) are kept; the image counts as missing when an
	// inventory is given.
	sort.Slice(lines, func(i, j int) bool {
		a, b := lines[i], lines[j]
		if a.id != b.id {
			return a.id < b.id
		}
		if a.rank != b.rank {
			return a.rank < b.rank
		}
		return bytes.Compare(a.b, b.b) < 0
	})
	for _, l := range lines {
		rep.Lines = append(rep.Lines, l.b)
		if l.rank == 0 {
			var f struct{ Namespace, Rule string }
			json.Unmarshal(l.b, &f)
			rep.Summary.PerRule[scan.SARIFRuleID(f.Namespace, f.Rule)]++
		}
	}
	if inv != nil {
		for _, im := range inv.Images {
			if _, ok := images[im.ID]; !ok {
				rep.Summary.Missing = append(rep.Summary.Missing, im.ID)
			}
		}
	}
	return rep, nil
}

// Write writes the report in format (table, json, ndjson or sarif).
func (r *FleetReport) Write(w io.Writer, format string) error {
	switch format {
	case "table", "":
		return r.writeTable(w)
	case "json":
		return r.writeJSON(w)
	case "ndjson":
		return r.writeNDJSON(w)
	case "sarif":
		return r.writeSARIF(w)
	}
	return fmt.Errorf("format %q: want %s", format, strings.Join(ReportFormats, ", "))
}

func (r *FleetReport) writeNDJSON(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, l := range r.Lines {
		bw.Write(l)
		bw.WriteByte('\n')
	}
	b, err := json.Marshal(struct {
		Type   string   `json:"type"`
		RunIDs []string `json:"run_ids"`
		ReportSummary
	}{"fleet_summary", r.RunIDs, r.Summary})
	if err != nil {
		return err
	}
	bw.Write(b)
	bw.WriteByte('\n')
	return bw.Flush()
}

func (r *FleetReport) writeJSON(w io.Writer) error {
	doc := struct {
		Schema  string            `json:"schema"`
		RunIDs  []string          `json:"run_ids"`
		Summary ReportSummary     `json:"summary"`
		Lines   []json.RawMessage `json:"results"`
	}{"vmscope-fleet-report-1", r.RunIDs, r.Summary, r.Lines}
	if doc.Lines == nil {
		doc.Lines = []json.RawMessage{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func (r *FleetReport) writeTable(w io.Writer) error {
	s := r.Summary
	fmt.Fprintf(w, "run %s: %d images: %d clean, %d with findings, %d failed, %d skipped, %d missing from results\n",
		strings.Join(r.RunIDs, ","), s.Images, s.Clean, s.Findings, s.Failed, s.Skipped, len(s.Missing))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tSTATUS\tDIRTY SOURCE\tFILES\tBYTES READ\tFINDINGS\tERROR")
	for _, il := range r.Images {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", il.ImageID, il.Status, il.DirtySource, il.Files, il.BytesRead, il.Findings, il.Error)
	}
	for _, m := range s.Missing {
		fmt.Fprintf(tw, "%s\tmissing\t\t\t\t\tno result\n", m)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.PerRule) > 0 {
		fmt.Fprintln(w, "findings per rule:")
		rules := make([]string, 0, len(s.PerRule))
		for k := range s.PerRule {
			rules = append(rules, k)
		}
		sort.Strings(rules)
		for _, k := range rules {
			fmt.Fprintf(w, "  %-40s %d\n", k, s.PerRule[k])
		}
	}
	return nil
}

// writeSARIF writes one SARIF 2.1.0 run: a result per finding, its
// location the image id and the guest path.
func (r *FleetReport) writeSARIF(w io.Writer) error {
	type loc struct {
		PhysicalLocation struct {
			ArtifactLocation struct {
				URI string `json:"uri"`
			} `json:"artifactLocation"`
		} `json:"physicalLocation"`
	}
	type result struct {
		RuleID     string         `json:"ruleId"`
		Level      string         `json:"level"`
		Message    map[string]any `json:"message"`
		Locations  []loc          `json:"locations"`
		Properties map[string]any `json:"properties"`
	}
	type rule struct {
		ID string `json:"id"`
	}
	var results []result
	rules := map[string]bool{}
	for _, l := range r.Lines {
		var f struct {
			ImageID   string         `json:"image_id"`
			Type      string         `json:"type"`
			Partition string         `json:"partition"`
			Path      string         `json:"path"`
			Rule      string         `json:"rule"`
			Namespace string         `json:"namespace"`
			SHA256    string         `json:"sha256"`
			Meta      map[string]any `json:"meta"`
		}
		if json.Unmarshal(l, &f) != nil || f.Type != TypeFinding {
			continue
		}
		id := scan.SARIFRuleID(f.Namespace, f.Rule)
		rules[id] = true
		var lc loc
		p := f.Path
		if f.Partition != "" {
			p = f.Partition + ":" + p
		}
		lc.PhysicalLocation.ArtifactLocation.URI = "vmscope-image:" + f.ImageID + "/" + strings.TrimPrefix(p, "/")
		results = append(results, result{id, scan.SARIFLevel(scan.Severity(f.Meta)), map[string]any{"text": fmt.Sprintf("%s matched %s in image %s", f.Rule, p, f.ImageID)},
			[]loc{lc}, map[string]any{"image_id": f.ImageID, "sha256": f.SHA256}})
	}
	var rs []rule
	for id := range rules {
		rs = append(rs, rule{id})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	if results == nil {
		results = []result{}
	}
	if rs == nil {
		rs = []rule{}
	}
	doc := map[string]any{
		"$schema": "https://json.schemastore.org/sarif-2.1.0.json",
		"version": "2.1.0",
		"runs": []any{map[string]any{
			"tool":    map[string]any{"driver": map[string]any{"name": "vmscope", "rules": rs}},
			"results": results,
		}},
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}
