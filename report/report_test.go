package report

import (
	"bytes"
	"strings"
	"testing"
)

const sample = `{"type":"finding","image":"/i.qcow2","partition":"p1","filesystem":"ext4","path":"/x/<script>alert(1)</script>","inode":16,"size":68,"sha256":"ab","rule":"R1","namespace":"n","tags":[],"meta":{"severity":"high"},"strings":[{"id":"$a","offset":7,"length":3}],"string_count":1}
{"type":"finding","image":"/i.qcow2","partition":"p1","filesystem":"ext4","path":"/y","inode":17,"size":1,"sha256":"cd","rule":"R2","namespace":"n","tags":[],"meta":{"severity":"critical"},"strings":[],"string_count":0}
{"type":"summary","schema":"vmscope.scan/v1","image":"/i.qcow2","chain":[{"path":"/i.qcow2","format":"qcow2","virtual_size":1048576,"backing":"/b<i>.raw","backing_format":"raw"},{"path":"/b<i>.raw","format":"raw","virtual_size":1048576}],"files":2,"findings":2,"matched_files":2,"errors":0}
{"volume":"p1","path":"/y","paths":["/y"],"inode":17,"type":"file","change":"modified","reasons":["data"],"size":1,"rescan":true}
{"time":"2024-03-14T15:09:26.5Z","macb":"m...","volume":"p1","path":"/y","inode":17,"mode":"r/rrw-r--r--","uid":0,"gid":0,"size":1}
{"time":"2024-03-14T16:00:00Z","macb":".ac.","volume":"p1","path":"/x/<script>alert(1)</script>","inode":16,"mode":"r/rrw-r--r--","uid":0,"gid":0,"size":68}
`

// TestRender: the image and its chain come first (one row per layer,
// its backing file named), the groups come in severity order, a guest or
// file name is escaped (never markup, in the tables, the plot or the
// embedded data), every event and the finding time are drawn, the same
// input gives the same bytes, and a line of no known shape is an error
// naming it.
func TestRender(t *testing.T) {
	render := func() string {
		var in Input
		if err := in.Read(strings.NewReader(sample), "s"); err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := Render(&b, &in); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	h := render()
	if h != render() {
		t.Fatal("not deterministic")
	}
	if strings.Contains(h, "<i>") {
		t.Fatal("a file name reached the page as markup")
	}
	if c, f := strings.Index(h, `<tr class="layer"`), strings.Index(h, `<tr class="finding"`); c < 0 || c > f {
		t.Errorf("the chain (at %d) does not come before the findings (at %d)", c, f)
	}
	if !strings.Contains(h, `<tr class="layer" data-path="/i.qcow2" data-format="qcow2" data-size="1048576" data-backing="/b&lt;i&gt;.raw">`) {
		t.Error("no row for the top layer and its backing file")
	}
	if strings.Contains(h, "<script>alert(1)") {
		t.Fatal("a guest name reached the page as markup")
	}
	if c, hi := strings.Index(h, ">critical ("), strings.Index(h, ">high ("); c < 0 || hi < 0 || c > hi {
		t.Errorf("severity groups out of order: critical at %d, high at %d", c, hi)
	}
	for sub, n := range map[string]int{`<tr class="finding"`: 2, `<circle class="ev"`: 2, `<line class="find"`: 1, `<tr class="change"`: 1, "$a@7 (3)": 1, `<tr class="layer"`: 2, "none: the base": 1} {
		if got := strings.Count(h, sub); got != n {
			t.Errorf("%q: %d, want %d", sub, got, n)
		}
	}
	if strings.Contains(h, "http://") && !strings.Contains(h, `xmlns="http://www.w3.org/2000/svg"`) {
		t.Error("an URL in the page")
	}
	var in Input
	if err := in.Read(strings.NewReader("{\"what\":1}\n"), "bad.ndjson"); err == nil || !strings.Contains(err.Error(), "bad.ndjson:1") {
		t.Errorf("unknown line: %v", err)
	}
}

// FuzzRead: any input is read or refused with an error; what is read
// renders, twice to the same bytes, with no raw "<script>" from the input.
func FuzzRead(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("{\"macb\":\"m...\",\"time\":\"2024-01-01T00:00:00Z\",\"path\":\"<script>\"}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var in Input
		if err := in.Read(bytes.NewReader(data), "f"); err != nil {
			return
		}
		var a, b bytes.Buffer
		if err := Render(&a, &in); err != nil {
			return
		}
		if err := Render(&b, &in); err != nil || !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Fatal("not deterministic")
		}
		if bytes.Count(a.Bytes(), []byte("<script")) != 2 {
			t.Fatalf("%d script elements", bytes.Count(a.Bytes(), []byte("<script")))
		}
	})
}
