package fleet

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

const results = `{"type":"finding","run_id":"r","image_id":"b","shard":"1/2","path":"/x","rule":"r1","namespace":"n"}
{"type":"image","run_id":"r","image_id":"b","shard":"1/2","path":"/b.img","status":"findings","files":3,"bytes_read":30,"findings":1}
{"type":"image","run_id":"r","image_id":"a","shard":"0/2","path":"/a.img","status":"skipped","error":"locked by h pid 1"}
{"type":"error","run_id":"r","image_id":"a","shard":"0/2","path":"/y","error":"bad"}
{"type":"image","run_id":"r","image_id":"a","shard":"0/2","path":"/a.img","status":"clean","files":2,"bytes_read":20}
`

// TestReportConcatenationOrder: any order of the same result lines gives
// the same report, without shards; a scan's image line wins over a
// skipped one; the summary counts what it should.
func TestReportConcatenationOrder(t *testing.T) {
	lines := strings.SplitAfter(strings.TrimSpace(results), "\n")
	inv, _ := NewInventory([]Image{{ID: "a", Path: "/a.img"}, {ID: "b", Path: "/b.img"}, {ID: "c", Path: "/c.img"}})
	var first []byte
	for rot := range lines {
		var rs []io.Reader
		for i := range lines {
			rs = append(rs, strings.NewReader(strings.TrimSpace(lines[(i+rot)%len(lines)])+"\n"))
		}
		rep, err := NewReport(rs, inv)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		for _, f := range ReportFormats {
			if err := rep.Write(&out, f); err != nil {
				t.Fatal(err)
			}
		}
		if first == nil {
			first = out.Bytes()
			s := rep.Summary
			if s.Images != 2 || s.Clean != 1 || s.Findings != 1 || s.Skipped != 0 || len(s.Missing) != 1 || s.Missing[0] != "c" || s.PerRule["n:r1"] != 1 || s.BytesRead != 50 {
				t.Fatalf("summary %+v", s)
			}
			if bytes.Contains(first, []byte(`"shard"`)) {
				t.Errorf("the report keeps shards:\n%s", first)
			}
		} else if !bytes.Equal(out.Bytes(), first) {
			t.Fatalf("rotation %d gives another report", rot)
		}
	}
}

// FuzzReport: any result stream gives a report (every format written) or
// an error; never a panic.
func FuzzReport(f *testing.F) {
	f.Add([]byte(results))
	f.Add([]byte("{\"type\":\"image\",\"image_id\":\"x\",\"status\":7}\n"))
	f.Add([]byte("{}\n[1]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := NewReport([]io.Reader{bytes.NewReader(b)}, nil)
		if err != nil {
			return
		}
		for _, fm := range ReportFormats {
			if err := rep.Write(io.Discard, fm); err != nil {
				t.Fatal(err)
			}
		}
	})
}
