package cfi

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmerr"
)

func testBuild() Build {
	return Build{Banner: "Linux version 6.1.0-test", TextPages: 0x1000, Layout: strings.Repeat("ab", 32)}
}

func testModel() *Model {
	return &Model{Build: testBuild(), Source: "plugin", LearnedMS: 1500,
		Pages: []Page{{Module: "ext4", Index: 3}, Core(0x10), Core(2), Core(2), {Module: "dummy", Index: 0}},
		Edges: []Edge{{Core(2), Core(0x10)}, {Core(0x10), Page{"ext4", 3}}, {Core(2), Core(0x10)}},
	}
}

func TestModelRoundTripCanonical(t *testing.T) {
	m := testModel()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseModel(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	want := []Page{Core(2), Core(0x10), {"dummy", 0}, {"ext4", 3}}
	if fmt.Sprint(got.Pages) != fmt.Sprint(want) {
		t.Errorf("pages %v, want %v", got.Pages, want)
	}
	if len(got.Edges) != 2 || !got.HasEdge(Edge{Core(2), Core(0x10)}) || !got.HasEdge(Edge{Core(0x10), Page{"ext4", 3}}) || got.HasEdge(Edge{Core(0x10), Core(2)}) {
		t.Errorf("edges %v", got.Edges)
	}
	if !got.HasPage(Page{"ext4", 3}) || got.HasPage(Page{"ext4", 2}) || got.HasPage(Core(3)) {
		t.Error("HasPage")
	}
	if got.Build != m.Build || got.Source != "plugin" || got.LearnedMS != 1500 {
		t.Errorf("header %+v", got)
	}
	b2, err := got.Marshal()
	if err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("not canonical (%v):\n%s\n%s", err, b, b2)
	}
	if c := got.Coverage(); c != 2.0/0x1000 {
		t.Errorf("coverage %v", c)
	}
}

func TestModelRefusesOtherBuild(t *testing.T) {
	m := testModel()
	if err := m.Build.Check(testBuild()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		field string
		mod   func(*Build)
	}{
		{"banner", func(b *Build) { b.Banner += "x" }},
		{"text_pages", func(b *Build) { b.TextPages++ }},
		{"layout_sha256", func(b *Build) { b.Layout = strings.Repeat("cd", 32) }},
	} {
		live := testBuild()
		tc.mod(&live)
		err := m.Build.Check(live)
		var be *BuildMismatchError
		if !errors.Is(err, ErrBuildMismatch) || !errors.As(err, &be) || be.Field != tc.field {
			t.Errorf("%s: %v", tc.field, err)
		}
	}
}

func TestParseModelRejects(t *testing.T) {
	good, err := testModel().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s := string(good)
	for _, tc := range []struct {
		name, in string
		want     error
	}{
		{"truncated", s[:len(s)/2], ErrModel},
		{"version", strings.Replace(s, `"version": 1`, `"version": 2`, 1), ErrModelVersion},
		{"format", strings.Replace(s, ModelFormat, "other", 1), ErrModel},
		{"unsorted", strings.Replace(s, `"core+0x2",`+"\n  \"core+0x10\"", `"core+0x10",`+"\n  \"core+0x2\"", 1), ErrModel},
		{"duplicate", strings.Replace(s, `"core+0x10",`, `"core+0x2",`, 1), ErrModel},
		{"past text", strings.Replace(s, `"core+0x10",`, `"core+0x1000",`, 1), ErrModel},
		{"leading zero", strings.Replace(s, `"core+0x10",`, `"core+0x010",`, 1), ErrModel},
		{"bad module", strings.Replace(s, `"ext4+0x3"`, `"ex t4+0x3"`, 1), ErrModel},
		{"unknown field", strings.Replace(s, `"source"`, `"sauce"`, 1), ErrModel},
		{"trailing", s + "{}", ErrModel},
		{"layout", strings.Replace(s, strings.Repeat("ab", 32), "xyz", 1), ErrModel},
	} {
		_, err := ParseModel(strings.NewReader(tc.in))
		var fe *vmerr.FormatError
		if !errors.Is(err, tc.want) || !errors.As(err, &fe) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	// A file past the cap is refused before it is decoded.
	big := bytes.Repeat([]byte(" "), MaxModelBytes+1)
	if _, err := ParseModel(bytes.NewReader(big)); !errors.Is(err, ErrModel) {
		t.Errorf("oversize: %v", err)
	}
}

func TestModelBuilder(t *testing.T) {
	b := NewModelBuilder()
	if !b.AddPage(Core(5)) || b.AddPage(Core(5)) || !b.AddEdge(Edge{Core(5), Core(6)}) || b.AddEdge(Edge{Core(5), Core(6)}) {
		t.Fatal("AddPage/AddEdge newness")
	}
	m := b.Model(testBuild(), "sample", 10)
	if len(m.Pages) != 1 || len(m.Edges) != 1 {
		t.Fatalf("%+v", m)
	}
	var out bytes.Buffer
	if err := m.Summary().WriteText(&out, func(s string) string { return s }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "pages: 1 (core 1, modules 0)") || !strings.Contains(out.String(), "edges: 1") {
		t.Errorf("summary:\n%s", out.String())
	}
}

// FuzzParseModel: whatever parses re-encodes to bytes that parse to the
// same model and encode identically (canonical), and respects the caps.
func FuzzParseModel(f *testing.F) {
	good, err := testModel().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":"vmscope-cfi-model","version":1,"build":{"banner":"b","text_pages":1,"layout_sha256":"` + strings.Repeat("0", 64) + `"},"source":"","learned_ms":0,"pages":["core+0x0"],"edges":[["core+0x0","core+0x0"]]}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseModel(bytes.NewReader(b))
		if err != nil {
			var fe *vmerr.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error without structure: %v", err)
			}
			return
		}
		if len(m.Pages) > MaxPages || len(m.Edges) > MaxEdges || len(m.Build.Banner) > MaxBanner {
			t.Fatalf("caps: %d pages %d edges", len(m.Pages), len(m.Edges))
		}
		enc, err := m.Marshal()
		if err != nil {
			t.Fatalf("parsed model does not encode: %v", err)
		}
		m2, err := ParseModel(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("re-encoded model does not parse: %v\n%s", err, enc)
		}
		enc2, err := m2.Marshal()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip differs: %v", err)
		}
		if fmt.Sprint(m.Pages, m.Edges, m.Build) != fmt.Sprint(m2.Pages, m2.Edges, m2.Build) {
			t.Fatal("round trip changed the model")
		}
	})
}
