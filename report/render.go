package report

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Plot geometry (SVG user units).
const (
	plotW, plotL, plotH = 1000.0, 60.0, 230.0
	// MaxMarks caps the events drawn; the rest are counted, not drawn.
	MaxMarks = 5000
	// window is how far around the finding times the plot reaches.
	window = 7 * 24 * time.Hour
)

// laneY places an event by its first flag: modified, accessed, changed,
// born.
func laneY(macb string) float64 {
	for i, c := range "macb" {
		if strings.ContainsRune(macb, c) {
			return 40 + float64(i)*40
		}
	}
	return 200
}

type mark struct {
	T     string // unix seconds, as text
	X, Y  string
	Title string
}

type sevGroup struct {
	Severity string
	Findings []findingRow
}

type findingRow struct {
	Rule, Location, Inode, Size, SHA256, Strings, Time string
}

// imageRow is an image and, when the scan output gave it, its chain.
type imageRow struct {
	Path   string
	Layers []layerRow
}

type layerRow struct {
	Depth                  int
	Path, Format           string
	Size, Human            string
	Backing, BackingFormat string
}

type page struct {
	Images     []imageRow
	Summary    string
	Groups     []sevGroup
	NFindings  int
	Changes    []Change
	Marks      []mark
	Finds      []mark
	NotDrawn   int
	NEvents    int
	T0, T1     string
	Ticks      []mark
	W, L, H    string
	ViewBox    string
	Data       template.JS
	HasPlot    bool
	WindowNote string
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) }

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// findingTime is the time of the file a finding names: its latest
// modification event in the timeline, or false when the timeline has none.
func (in *Input) findingTime(f *Finding) (time.Time, bool) {
	var best time.Time
	ok := false
	for i := range in.Events {
		e := &in.Events[i]
		if e.Path != f.Path || !strings.Contains(e.MACB, "m") || e.Source != "" {
			continue
		}
		if f.Partition != "" && e.Volume != f.Partition {
			continue
		}
		if f.Inode != 0 && e.Inode != 0 && e.Inode != f.Inode {
			continue
		}
		if !ok || e.Time.After(best) {
			best, ok = e.Time, true
		}
	}
	return best, ok
}

// imageRows lists the images, each with its chain (top first).
func (in *Input) imageRows() []imageRow {
	var out []imageRow
	for _, im := range in.Images {
		r := imageRow{Path: im}
		for _, c := range in.Chains {
			if c.Image != im {
				continue
			}
			for d, l := range c.Layers {
				r.Layers = append(r.Layers, layerRow{Depth: d, Path: l.Path, Format: l.Format,
					Size: strconv.FormatInt(l.VirtualSize, 10), Human: humanize.IBytes(uint64(max(l.VirtualSize, 0))),
					Backing: l.Backing, BackingFormat: l.BackingFormat})
			}
		}
		out = append(out, r)
	}
	return out
}

// Render writes the report page for in.
func Render(w io.Writer, in *Input) error {
	in.sortAll()
	p := page{Images: in.imageRows(), Changes: in.Changes, NFindings: len(in.Findings), NEvents: len(in.Events),
		W: ftoa(plotW), L: ftoa(plotL), H: ftoa(plotH), ViewBox: fmt.Sprintf("0 0 %s %s", ftoa(plotL+plotW+20), ftoa(plotH+30))}
	if in.Summary != nil {
		p.Summary = fmt.Sprintf("%v files scanned, %v findings in %v files, %v errors", in.Summary["files"], in.Summary["findings"], in.Summary["matched_files"], in.Summary["errors"])
	}
	var ftimes []time.Time
	for i := range in.Findings {
		f := &in.Findings[i]
		sev := f.Severity()
		if len(p.Groups) == 0 || p.Groups[len(p.Groups)-1].Severity != sev {
			p.Groups = append(p.Groups, sevGroup{Severity: sev})
		}
		var ss []string
		for _, s := range f.Strings {
			ss = append(ss, fmt.Sprintf("%s@%d (%d)", s.ID, s.Offset, s.Length))
		}
		loc := f.Path
		if f.Partition != "" {
			loc = f.Partition + ":" + f.Path
		}
		row := findingRow{Rule: f.Rule, Location: loc, Inode: strconv.FormatUint(f.Inode, 10), Size: strconv.FormatInt(f.Size, 10),
			SHA256: f.SHA256, Strings: strings.Join(ss, " ")}
		if t, ok := in.findingTime(f); ok {
			row.Time = t.UTC().Format(time.RFC3339Nano)
			ftimes = append(ftimes, t)
		}
		g := &p.Groups[len(p.Groups)-1]
		g.Findings = append(g.Findings, row)
	}
	// The plot: the events around the finding times (all of them when no
	// finding has a time).
	if len(in.Events) > 0 {
		lo, hi := in.Events[0].Time, in.Events[len(in.Events)-1].Time
		if len(ftimes) > 0 {
			flo, fhi := ftimes[0], ftimes[0]
			for _, t := range ftimes {
				if t.Before(flo) {
					flo = t
				}
				if t.After(fhi) {
					fhi = t
				}
			}
			lo, hi = flo.Add(-window), fhi.Add(window)
			p.WindowNote = "7 days either side of the finding times"
		}
		if !hi.After(lo) {
			hi = lo.Add(time.Second)
		}
		a, b := unix(lo), unix(hi)
		x := func(t time.Time) string { return ftoa(plotL + (unix(t)-a)/(b-a)*plotW) }
		for i := range in.Events {
			e := &in.Events[i]
			if e.Time.Before(lo) || e.Time.After(hi) {
				continue
			}
			if len(p.Marks) >= MaxMarks {
				p.NotDrawn++
				continue
			}
			title := e.Time.UTC().Format(time.RFC3339Nano) + " " + e.MACB + " " + e.Volume + ":" + e.Path
			if e.Source != "" {
				title += " (" + e.Source + ")"
			}
			p.Marks = append(p.Marks, mark{T: strconv.FormatFloat(unix(e.Time), 'f', -1, 64), X: x(e.Time), Y: ftoa(laneY(e.MACB)), Title: title})
		}
		for i, t := range ftimes {
			_ = i
			p.Finds = append(p.Finds, mark{T: strconv.FormatFloat(unix(t), 'f', -1, 64), X: x(t), Title: "finding: " + t.UTC().Format(time.RFC3339Nano)})
		}
		for i := 0; i <= 4; i++ {
			tt := a + (b-a)*float64(i)/4
			sec := int64(tt)
			p.Ticks = append(p.Ticks, mark{X: ftoa(plotL + plotW*float64(i)/4), Title: time.Unix(sec, 0).UTC().Format("2006-01-02T15:04:05Z")})
		}
		p.T0, p.T1 = strconv.FormatFloat(a, 'f', -1, 64), strconv.FormatFloat(b, 'f', -1, 64)
		p.HasPlot = true
	}
	data, err := json.Marshal(in) // escapes <, > and &: safe inside <script>
	if err != nil {
		return err
	}
	p.Data = template.JS(data)
	return tmpl.Execute(w, p)
}

var tmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>vmscope report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eee}code{font:12px monospace;word-break:break-all}
.sev-critical{color:#a00}.sev-high{color:#c40}.sev-medium{color:#a70}.sev-low{color:#555}
svg{border:1px solid #ccc;width:100%;max-width:1100px;height:auto;user-select:none}
circle.ev{fill:#36c;fill-opacity:.55}line.find{stroke:#d00;stroke-width:2}
text{font:11px sans-serif;fill:#444}.note{color:#666}
</style></head><body>
<h1>vmscope report</h1>
<section id="images"><h2>The image and its chain</h2>
{{range .Images}}<h3 class="image"><code>{{.Path}}</code></h3>
{{if .Layers}}<table class="chain"><tr><th>depth</th><th>file</th><th>format</th><th>virtual size</th><th>backing file</th></tr>
{{range .Layers}}<tr class="layer" data-path="{{.Path}}" data-format="{{.Format}}" data-size="{{.Size}}" data-backing="{{.Backing}}"><td>{{.Depth}}</td><td><code>{{.Path}}</code></td><td>{{.Format}}</td><td>{{.Human}} ({{.Size}} bytes)</td><td>{{if .Backing}}<code>{{.Backing}}</code> ({{.BackingFormat}}){{else}}none: the base{{end}}</td></tr>
{{end}}</table>{{else}}<p class="note">The input gives no chain for this image.</p>{{end}}{{end}}
{{with .Summary}}<p id="summary">{{.}}</p>{{end}}</section>
<section id="findings"><h2>Findings ({{.NFindings}})</h2>
{{range .Groups}}<h3 class="sev-{{.Severity}}">{{.Severity}} ({{len .Findings}})</h3>
<table><tr><th>rule</th><th>file</th><th>inode</th><th>size</th><th>strings: id@offset (length)</th><th>file modified</th><th>sha256</th></tr>
{{range .Findings}}<tr class="finding" data-rule="{{.Rule}}"><td>{{.Rule}}</td><td><code>{{.Location}}</code></td><td>{{.Inode}}</td><td>{{.Size}}</td><td><code>{{.Strings}}</code></td><td>{{.Time}}</td><td><code>{{.SHA256}}</code></td></tr>
{{end}}</table>{{else}}<p>No findings.</p>{{end}}</section>
<section id="changes"><h2>Changed files ({{len .Changes}})</h2>
{{if .Changes}}<table><tr><th>change</th><th>file</th><th>inode</th><th>type</th><th>why</th><th>fields</th><th>size</th></tr>
{{range .Changes}}<tr class="change"><td>{{.Change}}</td><td><code>{{.Volume}}:{{.Path}}</code></td><td>{{.Inode}}</td><td>{{.Type}}</td><td>{{range $i, $r := .Reasons}}{{if $i}}, {{end}}{{$r}}{{end}}</td><td>{{range $i, $r := .Fields}}{{if $i}}, {{end}}{{$r}}{{end}}</td><td>{{.Size}}</td></tr>
{{end}}</table>{{else}}<p>No diff or dirty input.</p>{{end}}</section>
<section id="timeline"><h2>Timeline</h2>
{{if .HasPlot}}<p class="note">{{len .Marks}} file events drawn{{with .WindowNote}} ({{.}}){{end}}{{if .NotDrawn}}, {{.NotDrawn}} more not drawn{{end}}; red lines: finding times. Wheel to zoom, double click to reset.</p>
<svg id="tl" viewBox="{{.ViewBox}}" data-t0="{{.T0}}" data-t1="{{.T1}}" data-w="{{.W}}" data-l="{{.L}}" xmlns="http://www.w3.org/2000/svg">
<text x="4" y="44">m</text><text x="4" y="84">a</text><text x="4" y="124">c</text><text x="4" y="164">b</text>
<line x1="{{.L}}" y1="{{.H}}" x2="1060.00" y2="{{.H}}" stroke="#999"/>
{{range .Ticks}}<text class="tick" x="{{.X}}" y="250" text-anchor="middle">{{.Title}}</text>
{{end}}{{range .Marks}}<circle class="ev" data-t="{{.T}}" cx="{{.X}}" cy="{{.Y}}" r="3"><title>{{.Title}}</title></circle>
{{end}}{{range .Finds}}<line class="find" data-t="{{.T}}" x1="{{.X}}" x2="{{.X}}" y1="20" y2="{{$.H}}"><title>{{.Title}}</title></line>
{{end}}</svg>{{else}}<p>No timeline input (vmscope timeline IMAGE --format ndjson).</p>{{end}}</section>
<script type="application/json" id="vmscope-data">{{.Data}}</script>
<script>
(function(){var s=document.getElementById('tl');if(!s)return;
var W=+s.getAttribute('data-w'),L=+s.getAttribute('data-l'),t0=+s.getAttribute('data-t0'),t1=+s.getAttribute('data-t1'),a=t0,b=t1;
var els=s.querySelectorAll('[data-t]'),ticks=s.querySelectorAll('text.tick');
function x(t){return L+(t-a)/(b-a)*W}
function draw(){for(var i=0;i<els.length;i++){var e=els[i],t=+e.getAttribute('data-t'),v=x(t).toFixed(2);
if(e.tagName==='circle'){e.setAttribute('cx',v)}else{e.setAttribute('x1',v);e.setAttribute('x2',v)}e.style.display=(t>=a&&t<=b)?'':'none'}
for(var j=0;j<ticks.length;j++){var tt=a+(b-a)*j/(ticks.length-1);ticks[j].textContent=new Date(Math.floor(tt)*1000).toISOString().replace('.000Z','Z')}}
s.addEventListener('wheel',function(ev){ev.preventDefault();var r=s.getBoundingClientRect(),px=(ev.clientX-r.left)/r.width*s.viewBox.baseVal.width,
tm=a+(px-L)/W*(b-a),k=ev.deltaY<0?0.8:1.25;a=tm-(tm-a)*k;b=tm+(b-tm)*k;draw()},{passive:false});
s.addEventListener('dblclick',function(){a=t0;b=t1;draw()});})();
</script>
</body></html>
`))
