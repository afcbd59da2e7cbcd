package scan

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/dustin/go-humanize"

	"github.com/vmscope/vmscope/internal/escape"
)

// ErrFormat is returned for an unknown output format.
var ErrFormat = errors.New("scan: unknown output format")

// Output formats accepted by Report.Write.
const (
	FormatTable  = "table"
	FormatJSON   = "json"
	FormatNDJSON = "ndjson"
	FormatSARIF  = "sarif"
)

// Formats lists the output formats, default first.
var Formats = []string{FormatTable, FormatJSON, FormatNDJSON, FormatSARIF}

// SchemaVersion names the JSON/NDJSON schema (scan/SCHEMA.md).
const SchemaVersion = "vmscope.scan/v1"

// ImageInfo describes the scanned image; the caller fills it (Scan does not
// know about images). Layers is the backing chain, top first, as the JSON
// document lists it; Chain is the same chain with each layer's size and
// backing file, as the NDJSON summary line lists it.
type ImageInfo struct {
	Path        string
	Format      string
	Size        int64
	Layers      []LayerInfo
	Chain       []ChainLayer
	Filesystems []FSInfo
}

// LayerInfo is one image of a backing chain.
type LayerInfo struct {
	Path   string `json:"path"`
	Format string `json:"format"`
}

// ChainLayer is one file of the backing chain in the NDJSON summary: its
// path (as opened), format, the virtual disk size it presents, and the
// file below it (its path as opened, resolved as QEMU resolves the name
// the file records, and that file's format; empty for the base).
type ChainLayer struct {
	Path          string `json:"path"`
	Format        string `json:"format"`
	VirtualSize   int64  `json:"virtual_size"`
	Backing       string `json:"backing,omitempty"`
	BackingFormat string `json:"backing_format,omitempty"`
}

// FSInfo is one scanned filesystem.
type FSInfo struct {
	Partition string `json:"partition"`
	Type      string `json:"type"`
	Label     string `json:"label"`
	UUID      string `json:"uuid"`
}

// Report is everything a scan output shows.
type Report struct {
	Version string // vmscope version, "" if unknown
	Image   ImageInfo
	Rules   *Rules // for the digest and count; may be nil
	Result  *Result
}

// Write renders the report in one of Formats ("" is table).
func (r *Report) Write(w io.Writer, format string) error {
	switch format {
	case "", FormatTable:
		return r.WriteTable(w)
	case FormatJSON:
		return r.WriteJSON(w)
	case FormatNDJSON:
		return r.WriteNDJSON(w)
	case FormatSARIF:
		return r.WriteSARIF(w)
	}
	return fmt.Errorf("%w: %q (want one of %s)", ErrFormat, format, strings.Join(Formats, ", "))
}

func (r *Report) result() *Result {
	if r.Result == nil {
		return &Result{}
	}
	return r.Result
}

// ---- JSON document ----

type jsonImage struct {
	Path   string `json:"path"`
	Format string `json:"format"`
	Size   int64  `json:"size"`
}

type jsonRules struct {
	Digest string `json:"digest"`
	Count  int    `json:"count"`
}

type jsonFileError struct {
	Partition string `json:"partition"`
	FS        string `json:"filesystem"`
	Path      string `json:"path"`
	PathRaw   []byte `json:"path_raw,omitempty"`
	Inode     uint64 `json:"inode"`
	Error     string `json:"error"`
}

// pathRaw is the path's bytes when they are not valid UTF-8 (JSON strings
// cannot carry them: encoding/json would replace each bad byte with
// U+FFFD, and two names would print the same), else nil. JSON carries it
// as base64.
func pathRaw(p string) []byte {
	if utf8.ValidString(p) {
		return nil
	}
	return []byte(p)
}

// jsonFinding is a finding with path_raw.
type jsonFinding struct {
	Finding
	PathRaw []byte `json:"path_raw,omitempty"`
}

// jsonSkipped is a skipped file with path_raw.
type jsonSkipped struct {
	Skipped
	PathRaw []byte `json:"path_raw,omitempty"`
}

func skippedJSON(ss []Skipped) []jsonSkipped {
	out := make([]jsonSkipped, 0, len(ss))
	for _, s := range ss {
		out = append(out, jsonSkipped{s, pathRaw(s.Path)})
	}
	return out
}

type jsonSummary struct {
	Files      int64 `json:"files"`
	Bytes      int64 `json:"bytes"`
	Matched    int   `json:"matched_files"`
	Findings   int   `json:"findings"`
	Errors     int   `json:"errors"`
	Skipped    int   `json:"skipped"`
	Excluded   int64 `json:"excluded"`
	Rules      int   `json:"rules"`
	DurationMS int64 `json:"duration_ms"`
}

type jsonDoc struct {
	Schema      string          `json:"schema"`
	Version     string          `json:"version"`
	Image       jsonImage       `json:"image"`
	Chain       []LayerInfo     `json:"chain"`
	Filesystems []FSInfo        `json:"filesystems"`
	Rules       jsonRules       `json:"rules"`
	Findings    []jsonFinding   `json:"findings"`
	Errors      []jsonFileError `json:"errors"`
	Skipped     []jsonSkipped   `json:"skipped"`
	// ModulePrefix is omitted when empty (most scans).
	ModulePrefix []ModulePrefix `json:"module_prefix,omitempty"`
	Summary      jsonSummary    `json:"summary"`
}

func (r *Report) rulesInfo() jsonRules {
	if r.Rules == nil {
		return jsonRules{Count: r.result().Summary.Rules}
	}
	return jsonRules{Digest: r.Rules.Digest(), Count: r.Rules.Count()}
}

func summaryJSON(s Summary) jsonSummary {
	return jsonSummary{s.Files, s.Bytes, s.Matched, s.Findings, s.Errors, s.Skipped, s.Excluded, s.Rules, s.Duration.Milliseconds()}
}

func errorsJSON(es []FileError) []jsonFileError {
	out := make([]jsonFileError, 0, len(es))
	for _, e := range es {
		out = append(out, errorJSON(e))
	}
	return out
}

func errorJSON(e FileError) jsonFileError {
	msg := ""
	if e.Err != nil {
		msg = e.Err.Error()
	}
	return jsonFileError{e.Partition, e.FS, e.Path, pathRaw(e.Path), e.Inode, msg}
}

// findingJSON is f normalized, with path_raw.
func findingJSON(f Finding) jsonFinding {
	return jsonFinding{normalized(f), pathRaw(f.Path)}
}

// normalized returns f with empty collections instead of nil, so JSON has
// [] and {} rather than null.
func normalized(f Finding) Finding {
	if f.Tags == nil {
		f.Tags = []string{}
	}
	if f.Meta == nil {
		f.Meta = map[string]any{}
	}
	if f.Strings == nil {
		f.Strings = []StringMatch{}
	}
	return f
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// WriteJSON writes one JSON document (schema in SCHEMA.md).
func (r *Report) WriteJSON(w io.Writer) error {
	res := r.result()
	fs := make([]jsonFinding, 0, len(res.Findings))
	for _, f := range res.Findings {
		fs = append(fs, findingJSON(f))
	}
	doc := jsonDoc{
		Schema:       SchemaVersion,
		Version:      r.Version,
		Image:        jsonImage{r.Image.Path, r.Image.Format, r.Image.Size},
		Chain:        nonNil(r.Image.Layers),
		Filesystems:  nonNil(r.Image.Filesystems),
		Rules:        r.rulesInfo(),
		Findings:     fs,
		Errors:       errorsJSON(res.Errors),
		Skipped:      skippedJSON(res.Skipped),
		ModulePrefix: res.ModulePrefix,
		Summary:      summaryJSON(res.Summary),
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

// ---- NDJSON ----

type ndFinding struct {
	Type  string `json:"type"`
	Image string `json:"image"`
	jsonFinding
}

type ndError struct {
	Type  string `json:"type"`
	Image string `json:"image"`
	jsonFileError
}

type ndSkipped struct {
	Type  string `json:"type"`
	Image string `json:"image"`
	jsonSkipped
}

type ndModulePrefix struct {
	Type  string `json:"type"`
	Image string `json:"image"`
	ModulePrefix
}

type ndSummary struct {
	Type   string       `json:"type"`
	Schema string       `json:"schema"`
	Image  string       `json:"image"`
	Chain  []ChainLayer `json:"chain,omitempty"`
	Rules  jsonRules    `json:"rules"`
	jsonSummary
}

// WriteNDJSON writes one JSON object per line: every finding
// ("type":"finding"), then every error ("error"), every skipped file
// ("skipped"), then one "summary" line. Outputs of several images
// concatenate.
func (r *Report) WriteNDJSON(w io.Writer) error {
	res := r.result()
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	img := r.Image.Path
	for _, f := range res.Findings {
		if err := enc.Encode(ndFinding{"finding", img, findingJSON(f)}); err != nil {
			return err
		}
	}
	for _, e := range res.Errors {
		if err := enc.Encode(ndError{"error", img, errorJSON(e)}); err != nil {
			return err
		}
	}
	for _, s := range res.Skipped {
		if err := enc.Encode(ndSkipped{"skipped", img, jsonSkipped{s, pathRaw(s.Path)}}); err != nil {
			return err
		}
	}
	for _, m := range res.ModulePrefix {
		if err := enc.Encode(ndModulePrefix{"module_prefix", img, m}); err != nil {
			return err
		}
	}
	if err := enc.Encode(ndSummary{"summary", SchemaVersion, img, r.Image.Chain, r.rulesInfo(), summaryJSON(res.Summary)}); err != nil {
		return err
	}
	return bw.Flush()
}

// ---- table ----

// Severity returns a finding's severity: its "severity" meta, else one
// derived from a Loki-style integer "score" meta, else "".
func Severity(meta map[string]any) string {
	if s, ok := meta["severity"].(string); ok {
		return strings.ToLower(s)
	}
	if sc, ok := meta["score"].(int); ok {
		switch {
		case sc >= 75:
			return "high"
		case sc >= 40:
			return "medium"
		default:
			return "low"
		}
	}
	return ""
}

// location is "p1:/etc/passwd", or the path when there is no partition;
// the path is escaped as ls -b does (internal/escape), so a name is never
// printed as raw bytes.
func location(partition, path string) string {
	path = escape.Octal(path)
	if partition == "" {
		return path
	}
	return partition + ":" + path
}

// WriteTable writes the human-readable report.
func (r *Report) WriteTable(w io.Writer) error {
	res := r.result()
	bw := bufio.NewWriter(w)
	if r.Image.Path != "" {
		fmt.Fprintf(bw, "image %s (%s, %s)\n", r.Image.Path, r.Image.Format, humanize.IBytes(uint64(max(r.Image.Size, 0))))
		for _, l := range r.Image.Layers {
			fmt.Fprintf(bw, "  layer %s (%s)\n", l.Path, l.Format)
		}
		for _, f := range r.Image.Filesystems {
			fmt.Fprintf(bw, "  %s %s label=%q uuid=%s\n", f.Partition, f.Type, f.Label, f.UUID)
		}
		fmt.Fprintln(bw)
	}
	if len(res.Findings) > 0 {
		tw := tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEVERITY\tRULE\tFILE\tSTRINGS\tSHA256")
		for _, f := range res.Findings {
			sev := Severity(f.Meta)
			if sev == "" {
				sev = "-"
			}
			var ss []string
			for _, s := range f.Strings[:min(len(f.Strings), 3)] {
				ss = append(ss, fmt.Sprintf("%s@%d", s.ID, s.Offset))
			}
			if more := f.StringCount - min(len(f.Strings), 3); more > 0 {
				ss = append(ss, fmt.Sprintf("+%d", more))
			}
			str := strings.Join(ss, ",")
			if str == "" {
				str = "-"
			}
			sha := f.SHA256
			if len(sha) > 16 {
				sha = sha[:16]
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", sev, f.Rule, location(f.Partition, f.Path), str, sha)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(bw)
	}
	if len(res.Errors) > 0 {
		fmt.Fprintln(bw, "errors:")
		for _, e := range res.Errors {
			fmt.Fprintf(bw, "  %s: %v\n", location(e.Partition, e.Path), e.Err)
		}
		fmt.Fprintln(bw)
	}
	if len(res.Skipped) > 0 {
		fmt.Fprintln(bw, "skipped:")
		for _, s := range res.Skipped {
			fmt.Fprintf(bw, "  %s (%s): %s\n", location(s.Partition, s.Path), humanize.IBytes(uint64(max(s.Size, 0))), s.Reason)
		}
		fmt.Fprintln(bw)
	}
	if len(res.ModulePrefix) > 0 {
		fmt.Fprintln(bw, "module rules saw only a prefix (bigger than --module-max-size):")
		for _, m := range res.ModulePrefix {
			fmt.Fprintf(bw, "  %s (%s): %s parsed the first %s\n", location(m.Partition, m.Path), humanize.IBytes(uint64(max(m.Size, 0))),
				strings.Join(m.Modules, ", "), humanize.IBytes(uint64(max(m.Prefix, 0))))
		}
		fmt.Fprintln(bw)
	}
	s := res.Summary
	fmt.Fprintf(bw, "%d findings in %d files; %d files (%s) scanned with %d rules in %s; %d errors, %d skipped, %d excluded\n",
		s.Findings, s.Matched, s.Files, humanize.IBytes(uint64(max(s.Bytes, 0))), s.Rules,
		s.Duration.Round(time.Millisecond), s.Errors, s.Skipped, s.Excluded)
	return bw.Flush()
}

// ---- SARIF 2.1.0 ----

type sarifLog struct {
	Schema  string     `json:"$schema"`
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool        sarifTool         `json:"tool"`
	Invocations []sarifInvocation `json:"invocations"`
	Results     []sarifResult     `json:"results"`
	Properties  map[string]any    `json:"properties,omitempty"`
}

type sarifTool struct {
	Driver sarifDriver `json:"driver"`
}

type sarifDriver struct {
	Name           string      `json:"name"`
	Version        string      `json:"version,omitempty"`
	InformationURI string      `json:"informationUri,omitempty"`
	Rules          []sarifRule `json:"rules"`
}

type sarifText struct {
	Text string `json:"text"`
}

type sarifRule struct {
	ID                   string         `json:"id"`
	Name                 string         `json:"name"`
	ShortDescription     *sarifText     `json:"shortDescription,omitempty"`
	HelpURI              string         `json:"helpUri,omitempty"`
	DefaultConfiguration sarifConfig    `json:"defaultConfiguration"`
	Properties           map[string]any `json:"properties"`
}

type sarifConfig struct {
	Level string `json:"level"`
}

type sarifResult struct {
	RuleID     string          `json:"ruleId"`
	RuleIndex  int             `json:"ruleIndex"`
	Level      string          `json:"level"`
	Message    sarifText       `json:"message"`
	Locations  []sarifLocation `json:"locations"`
	Properties map[string]any  `json:"properties"`
}

type sarifLocation struct {
	PhysicalLocation sarifPhysical `json:"physicalLocation"`
}

type sarifPhysical struct {
	ArtifactLocation sarifArtifact `json:"artifactLocation"`
	Region           *sarifRegion  `json:"region,omitempty"`
}

type sarifArtifact struct {
	URI string `json:"uri"`
}

type sarifRegion struct {
	ByteOffset int64 `json:"byteOffset"`
	ByteLength int   `json:"byteLength"`
}

type sarifInvocation struct {
	ExecutionSuccessful bool                `json:"executionSuccessful"`
	Notifications       []sarifNotification `json:"toolExecutionNotifications"`
}

type sarifNotification struct {
	Level     string          `json:"level"`
	Message   sarifText       `json:"message"`
	Locations []sarifLocation `json:"locations,omitempty"`
}

// SARIFLevel maps a severity to a SARIF level: critical and high are
// "error", medium (and unknown) "warning", low and info "note".
func SARIFLevel(severity string) string {
	switch severity {
	case "critical", "high":
		return "error"
	case "low", "info", "informational":
		return "note"
	}
	return "warning"
}

// sarifURI is "p1:/etc/passwd" (the partition as URI scheme) or the
// escaped path.
func sarifURI(partition, p string) string {
	u := (&url.URL{Path: p}).EscapedPath()
	if partition == "" {
		return u
	}
	return partition + ":" + u
}

// SARIFRuleID is the SARIF rule id of a YARA rule: "namespace:rule" (names
// are unique only within a namespace).
func SARIFRuleID(namespace, rule string) string { return namespace + ":" + rule }

// WriteSARIF writes a SARIF 2.1.0 log with one run. tool.driver.rules lists
// the rules that matched, sorted by id, with their YARA meta as properties.
func (r *Report) WriteSARIF(w io.Writer) error {
	res := r.result()
	index := map[string]int{}
	var rules []sarifRule
	for _, f := range res.Findings {
		id := SARIFRuleID(f.Namespace, f.Rule)
		if _, ok := index[id]; ok {
			continue
		}
		index[id] = 0
		sr := sarifRule{
			ID:                   id,
			Name:                 f.Rule,
			DefaultConfiguration: sarifConfig{SARIFLevel(Severity(f.Meta))},
			Properties: map[string]any{
				"namespace": f.Namespace,
				"tags":      nonNil(f.Tags),
				"meta":      normalized(f).Meta,
			},
		}
		if d, ok := f.Meta["description"].(string); ok && d != "" {
			sr.ShortDescription = &sarifText{d}
		}
		if ref, ok := f.Meta["reference"].(string); ok && isHTTPURL(ref) {
			sr.HelpURI = ref
		}
		rules = append(rules, sr)
	}
	sort.Slice(rules, func(i, j int) bool { return rules[i].ID < rules[j].ID })
	for i, sr := range rules {
		index[sr.ID] = i
	}
	results := make([]sarifResult, 0, len(res.Findings))
	for _, f := range res.Findings {
		id := SARIFRuleID(f.Namespace, f.Rule)
		msg := fmt.Sprintf("YARA rule %s matched %s", f.Rule, location(f.Partition, f.Path))
		if d, ok := f.Meta["description"].(string); ok && d != "" {
			msg += ": " + d
		}
		loc := sarifLocation{sarifPhysical{ArtifactLocation: sarifArtifact{sarifURI(f.Partition, f.Path)}}}
		if len(f.Strings) > 0 {
			loc.PhysicalLocation.Region = &sarifRegion{f.Strings[0].Offset, f.Strings[0].Length}
		}
		props := map[string]any{
			"image":        r.Image.Path,
			"partition":    f.Partition,
			"filesystem":   f.FS,
			"path":         escape.Octal(f.Path),
			"inode":        f.Inode,
			"size":         f.Size,
			"sha256":       f.SHA256,
			"namespace":    f.Namespace,
			"tags":         nonNil(f.Tags),
			"strings":      nonNil(f.Strings),
			"string_count": f.StringCount,
		}
		if raw := pathRaw(f.Path); raw != nil {
			props["path_raw"] = raw
		}
		results = append(results, sarifResult{
			RuleID:     id,
			RuleIndex:  index[id],
			Level:      SARIFLevel(Severity(f.Meta)),
			Message:    sarifText{msg},
			Locations:  []sarifLocation{loc},
			Properties: props,
		})
	}
	inv := sarifInvocation{ExecutionSuccessful: len(res.Errors) == 0, Notifications: []sarifNotification{}}
	for _, e := range res.Errors {
		inv.Notifications = append(inv.Notifications, sarifNotification{
			Level:     "error",
			Message:   sarifText{errorJSON(e).Error},
			Locations: []sarifLocation{{sarifPhysical{ArtifactLocation: sarifArtifact{sarifURI(e.Partition, e.Path)}}}},
		})
	}
	for _, m := range res.ModulePrefix {
		inv.Notifications = append(inv.Notifications, sarifNotification{
			Level:     "warning",
			Message:   sarifText{fmt.Sprintf("module rules saw only a prefix: %s parsed the first %d of %d bytes", strings.Join(m.Modules, ", "), m.Prefix, m.Size)},
			Locations: []sarifLocation{{sarifPhysical{ArtifactLocation: sarifArtifact{sarifURI(m.Partition, m.Path)}}}},
		})
	}
	log := sarifLog{
		Schema:  "https://json.schemastore.org/sarif-2.1.0.json",
		Version: "2.1.0",
		Runs: []sarifRun{{
			Tool: sarifTool{sarifDriver{
				Name:    "vmscope",
				Version: r.Version,
				Rules:   nonNil(rules),
			}},
			Invocations: []sarifInvocation{inv},
			Results:     results,
			Properties: map[string]any{
				"image":        r.Image.Path,
				"rules_digest": r.rulesInfo().Digest,
				"summary":      summaryJSON(res.Summary),
			},
		}},
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(log)
}

func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != ""
}
