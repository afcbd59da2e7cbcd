package main

import (
	"bytes"
	"encoding/json"
	"html"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestReportInChromium builds the report from real outputs of the
// fixtures (scan of scan-overlay.qcow2, a qcow2 overlay on scan.qcow2;
// diff of ext4.img and ext4-changed.img; timeline of the overlay), checks
// that the same inputs give the same bytes, then opens it in headless
// Chromium (Debian's chromium) behind a recording proxy and reads the DOM
// it built: one row per layer of the image's chain, each equal to what
// `qemu-img info --backing-chain --output=json` says of that file (path,
// format, virtual size, backing file); one row per finding, one circle per
// timeline event in the plotted window, one red line per finding whose
// file has a modification time, one row per change; the proxy sees no
// request (and does see the one of a control page, so the check can
// fail). The screenshot is kept in testdata/out-ir-artifacts/.
func TestReportInChromium(t *testing.T) {
	scanImg := fixture.Path(t, "scan-overlay.qcow2")
	a, b := fixture.Path(t, "ext4.img"), fixture.Path(t, "ext4-changed.img")
	chromium := fixture.Tool(t, "chromium")
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	scanOut, _, code := vmscope(t, "scan", scanImg, "--format", "ndjson")
	if code != 1 {
		t.Fatalf("scan: exit %d", code)
	}
	diffOut, _, code := vmscope(t, "diff", a, b, "--format", "ndjson")
	if code > 1 {
		t.Fatalf("diff: exit %d", code)
	}
	tlOut, _, code := vmscope(t, "timeline", scanImg, "--format", "ndjson")
	if code != 0 {
		t.Fatalf("timeline: exit %d", code)
	}
	in := []string{write("scan.ndjson", scanOut), write("diff.ndjson", diffOut), write("timeline.ndjson", tlOut)}
	html1 := filepath.Join(dir, "r1.html")
	html2 := filepath.Join(dir, "r2.html")
	for _, o := range []string{html1, html2} {
		if _, e, code := vmscope(t, append(append([]string{"report"}, in...), "-o", o)...); code != 0 {
			t.Fatalf("report: exit %d: %s", code, e)
		}
	}
	r1, _ := os.ReadFile(html1)
	r2, _ := os.ReadFile(html2)
	if !bytes.Equal(r1, r2) {
		t.Fatal("same inputs, different bytes")
	}

	// What the DOM must hold, from the inputs.
	type fnd struct {
		Type, Partition, Path string
	}
	var findings []fnd
	for _, l := range strings.Split(strings.TrimSpace(scanOut), "\n") {
		var f fnd
		json.Unmarshal([]byte(l), &f)
		if f.Type == "finding" {
			findings = append(findings, f)
		}
	}
	type ev struct {
		Time         time.Time
		MACB, Volume string
		Path         string
	}
	var evs []ev
	for _, l := range strings.Split(strings.TrimSpace(tlOut), "\n") {
		var e ev
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
	}
	var lo, hi time.Time
	marked := 0
	for _, f := range findings {
		var m time.Time
		for _, e := range evs {
			if e.Path == f.Path && (f.Partition == "" || e.Volume == f.Partition) && strings.Contains(e.MACB, "m") && e.Time.After(m) {
				m = e.Time
			}
		}
		if m.IsZero() {
			continue
		}
		marked++
		if lo.IsZero() || m.Before(lo) {
			lo = m
		}
		if m.After(hi) {
			hi = m
		}
	}
	inWindow := 0
	for _, e := range evs {
		if !e.Time.Before(lo.Add(-7*24*time.Hour)) && !e.Time.After(hi.Add(7*24*time.Hour)) {
			inWindow++
		}
	}
	changes := strings.Count(strings.TrimSpace(diffOut), "\n") + 1
	if len(findings) == 0 || marked == 0 || inWindow == 0 {
		t.Fatalf("inputs prove nothing: %d findings, %d with a time, %d events", len(findings), marked, inWindow)
	}

	// A proxy that records every request the browser makes.
	// Chromium's own service traffic (network time, component and
	// extension updates, accounts) is not the page's: it is logged and
	// left out by host; any other request counts.
	browserHosts := map[string]bool{"clients2.google.com": true, "update.googleapis.com:443": true, "update.googleapis.com": true,
		"accounts.google.com:443": true, "clients2.google.com:443": true, "content-autofill.googleapis.com:443": true,
		"optimizationguide-pa.googleapis.com:443": true, "www.google.com:443": true, "safebrowsingohttpgateway.googleapis.com:443": true}
	var requests atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if browserHosts[r.Host] {
			t.Logf("browser's own request, not the page's: %s %s", r.Method, r.Host)
		} else {
			requests.Add(1)
			t.Logf("request: %s %s (host %s)", r.Method, r.URL, r.Host)
		}
		http.Error(w, "no network", http.StatusForbidden)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	profile := t.TempDir()
	browse := func(args ...string) string {
		t.Helper()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + profile,
			"--proxy-server=http://" + ln.Addr().String(), "--proxy-bypass-list=<-loopback>",
			"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
			"--disable-extensions", "--disable-dev-shm-usage", "--no-pings", "--disable-domain-reliability",
			"--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate"}
		cmd := exec.Command(chromium, append(base, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, stderr.Bytes())
		}
		return string(out)
	}
	dom := browse("--dump-dom", "file://"+html1)
	if n := requests.Load(); n != 0 {
		t.Errorf("the report made %d requests", n)
	}
	count := func(re string) int { return len(regexp.MustCompile(re).FindAllString(dom, -1)) }
	checkChain(t, scanImg, dom)
	if n := count(`<tr class="finding"`); n != len(findings) {
		t.Errorf("%d finding rows, %d findings", n, len(findings))
	}
	if n := count(`<circle class="ev"`); n != inWindow {
		t.Errorf("%d event marks, %d events in the window", n, inWindow)
	}
	if n := count(`<line class="find"`); n != marked {
		t.Errorf("%d finding marks, %d findings with a time", n, marked)
	}
	if n := count(`<tr class="change"`); n != changes {
		t.Errorf("%d change rows, %d changes", n, changes)
	}
	art := filepath.Join(fixture.Root(), "testdata", "out-ir-artifacts")
	if err := os.MkdirAll(art, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(art, "report.png")
	os.Remove(shot)
	browse("--screenshot="+shot, "--window-size=1280,1800", "file://"+html1)
	if st, err := os.Stat(shot); err != nil || st.Size() < 10000 {
		t.Errorf("screenshot %s: %v", shot, err)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("the report made %d requests", n)
	}
	// The control: a page that loads an image from the network is seen.
	ctl := write("control.html", `<!DOCTYPE html><img src="http://example.invalid/x.png">`)
	browse("--dump-dom", "file://"+ctl)
	if requests.Load() == 0 {
		t.Fatal("the proxy saw no request of the control page: the network check cannot fail")
	}
}

// checkChain compares the chain rows of the report's DOM with what
// qemu-img info --backing-chain says of img: one row per file, top first,
// with its path, format, virtual size and backing file.
func checkChain(t *testing.T, img, dom string) {
	t.Helper()
	out, err := exec.Command(fixture.Tool(t, "qemu-img"), "info", "--backing-chain", "--output=json", img).Output()
	if err != nil {
		t.Fatalf("qemu-img info: %v", err)
	}
	var want []struct {
		Filename    string `json:"filename"`
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
		FullBacking string `json:"full-backing-filename"`
	}
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	if len(want) < 2 {
		t.Fatalf("%s: a chain of %d files proves nothing", img, len(want))
	}
	canon := func(p string) string {
		if p == "" {
			return ""
		}
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := filepath.EvalSymlinks(a); err == nil {
			return r
		}
		return a
	}
	rows := regexp.MustCompile(`<tr class="layer" data-path="([^"]*)" data-format="([^"]*)" data-size="([^"]*)" data-backing="([^"]*)"`).FindAllStringSubmatch(dom, -1)
	if len(rows) != len(want) {
		t.Fatalf("%d chain rows, qemu-img lists %d files", len(rows), len(want))
	}
	for i, w := range want {
		r := rows[i]
		path, backing := canon(html.UnescapeString(r[1])), canon(html.UnescapeString(r[4]))
		if path != canon(w.Filename) || r[2] != w.Format || r[3] != strconv.FormatInt(w.VirtualSize, 10) || backing != canon(w.FullBacking) {
			t.Errorf("chain row %d: %s %s %s backing %q; qemu-img: %s %s %d backing %q",
				i, path, r[2], r[3], backing, canon(w.Filename), w.Format, w.VirtualSize, canon(w.FullBacking))
		}
	}
}
